"""Writes the MIME test corpus: NAME.eml (bytes as on the wire, CRLF) + expected.json.

    python tests/mime_corpus/generate.py

The expected values are written here by hand, next to each message; they
never come from gsmtpd.mime.  The .eml files and expected.json are
committed, so the tests read data, not this script.
"""

from __future__ import annotations

import base64
import json
import quopri
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES: dict[str, tuple[bytes, dict]] = {}

ENVELOPE = (
    "Received: from mx.example.org (mx.example.org [192.0.2.7])\r\n"
    "\tby mail.example.net with ESMTP; Mon, 3 Jun 2024 09:00:00 +0000\r\n"
    "Date: Mon, 3 Jun 2024 09:00:00 +0000\r\n"
    "To: inbox@example.net\r\n"
    "MIME-Version: 1.0\r\n"
)


def add(name: str, message: bytes | str, **expected) -> None:
    if isinstance(message, str):
        message = message.encode("utf-8")
    # Everything on the wire is CRLF; the bare-LF case opts out.
    if not expected.pop("keep_line_ends", False):
        message = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert name not in CASES, name
    CASES[name] = (message, expected)


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def b64(data: bytes) -> bytes:
    return crlf(base64.encodebytes(data))


def qp(data: bytes) -> bytes:
    return crlf(quopri.encodestring(data))


def word(text: str, codec: str, label: str, encoding: str = "B") -> str:
    """One RFC 2047 encoded word."""
    data = text.encode(codec)
    if encoding == "B":
        return f"=?{label}?B?{base64.b64encode(data).decode()}?="
    encoded = "".join(chr(b) if (48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122) else
                      ("_" if b == 32 else f"={b:02X}") for b in data)
    return f"=?{label}?Q?{encoded}?="


# --- one message per charset ------------------------------------------------

FRENCH = "Voilà l'été: crème brûlée, façade, naïve, œuvre? Non — déjà vu à Genève."
CZECH = "Příliš žluťoučký kůň úpěl ďábelské ódy. Zdraví Štěpán."
POLISH = "Zażółć gęślą jaźń. Pchnąć w tę łódź jeża lub ośm skrzyń fig."
RUSSIAN = "Съешь же ещё этих мягких французских булок, да выпей чаю. Привет из Москвы!"
UKRAINIAN = "Чуєш їх, доцю, га? Кумедна ж ти, прощайся без ґольфів! Привіт з Києва."
GREEK = "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Καλημέρα από την Αθήνα!"
HEBREW = "דג סקרן שט בים מאוכזב ולפתע מצא לו חברה. שלום מתל אביב!"
ARABIC = "نص حكيم له سر قاطع وذو شأن عظيم مكتوب على ثوب أخضر ومغلف بجلد أزرق."
TURKISH = "Pijamalı hasta yağız şoföre çabucak güvendi. Görüşürüz, İstanbul!"
THAI = "เป็นมนุษย์สุดประเสริฐเลิศคุณค่า กว่าบรรดาฝูงสัตว์เดรัจฉาน ขอบคุณครับ"
JAPANESE = "いろはにほへと ちりぬるを。日本語のメールです。よろしくお願いします。"
CHINESE_S = "我能吞下玻璃而不伤身体。这是一封测试邮件，谢谢您的合作。"
CHINESE_T = "我能吞下玻璃而不傷身體。這是一封測試郵件，謝謝您的合作。"
KOREAN = "다람쥐 헌 쳇바퀴에 타고파. 이것은 테스트 메일입니다. 감사합니다."
LATVIAN = "Glāžšķūņa rūķīši dzērumā čiepj Baha koncertflīģeļu vākus."
LITHUANIAN = "Įlinkdama fechtuotojo špaga sublykčiojusi pragręžė apvalų arbūzą."
ESPERANTO = "Eĥoŝanĝo ĉiuĵaŭde. Ĉu vi parolas Esperanton? Ĝis revido!"
ICELANDIC = "Kæmi ný öxi hér, ykist þjófum nú bæði víl og ádrepa. Þetta er próf."
WELSH = "Parciais fy jac codi baw hud llawn dŵr ger tŷ Mabon. Ŵ Ŷ ŵ ŷ."
ROMANIAN = "Înjurând pițigăiat, zoofobul comandă vexat whisky și tequila."
ESTONIAN = "Põdur Zagrebi tšellomängija-följetonist Ciqo külmetas kehvas garaažis."
VIETNAMESE = "Xin chào, cám ơn bạn. Tôi là người Hà Nội, ưa ăn phở."
GERMAN = "Falsches Üben von Xylophonmusik quält jeden größeren Zwerg. Grüße!"
EURO = "Le cœur déçu mais l'âme plutôt naïve, Louÿs rêva de crapaüter. Prix: 5 €."
SMART = "“Smart quotes” — and an en dash – cost €5… that’s all."

# label as declared, Python codec used to write the bytes, text, the
# charset parse() must report, transfer encoding.
CHARSET_CASES = [
    ("utf-8", "utf-8", FRENCH + " 😀", "utf-8", "8bit"),
    ("utf8", "utf-8", RUSSIAN, "utf-8", "base64"),
    ("us-ascii", "ascii", "Plain old ASCII text, nothing more.", "us-ascii", "7bit"),
    ("iso-8859-1", "latin-1", FRENCH.replace("œ", "oe").replace("—", "-"), "iso-8859-1", "quoted-printable"),
    ("ISO-8859-2", "iso8859_2", CZECH, "iso-8859-2", "quoted-printable"),
    ("iso-8859-2", "iso8859_2", POLISH, "iso-8859-2", "8bit"),
    ("iso-8859-3", "iso8859_3", ESPERANTO, "iso-8859-3", "8bit"),
    ("iso-8859-4", "iso8859_4", LATVIAN, "iso-8859-4", "quoted-printable"),
    ("iso-8859-5", "iso8859_5", RUSSIAN, "iso-8859-5", "8bit"),
    ("iso-8859-6", "iso8859_6", ARABIC, "iso-8859-6", "base64"),
    ("iso-8859-7", "iso8859_7", GREEK, "iso-8859-7", "8bit"),
    ("iso-8859-8", "iso8859_8", HEBREW, "iso-8859-8", "base64"),
    ("iso-8859-8-i", "iso8859_8", HEBREW, "iso-8859-8-i", "quoted-printable"),
    ("iso-8859-9", "iso8859_9", TURKISH, "iso-8859-9", "8bit"),
    ("iso-8859-10", "iso8859_10", ICELANDIC, "iso-8859-10", "8bit"),
    ("iso-8859-13", "iso8859_13", LITHUANIAN, "iso-8859-13", "quoted-printable"),
    ("iso-8859-14", "iso8859_14", WELSH, "iso-8859-14", "8bit"),
    ("iso-8859-15", "iso8859_15", EURO, "iso-8859-15", "quoted-printable"),
    ("iso-8859-16", "iso8859_16", ROMANIAN, "iso-8859-16", "8bit"),
    ("windows-1250", "cp1250", CZECH, "windows-1250", "8bit"),
    ("windows-1251", "cp1251", RUSSIAN, "windows-1251", "quoted-printable"),
    ("windows-1252", "cp1252", SMART, "windows-1252", "8bit"),
    ("windows-1253", "cp1253", GREEK, "windows-1253", "base64"),
    ("windows-1254", "cp1254", TURKISH, "windows-1254", "8bit"),
    ("windows-1255", "cp1255", HEBREW, "windows-1255", "8bit"),
    ("windows-1256", "cp1256", ARABIC, "windows-1256", "quoted-printable"),
    ("windows-1257", "cp1257", ESTONIAN, "windows-1257", "8bit"),
    ("windows-1258", "cp1258", VIETNAMESE.replace("ư", "ư").replace("ạ", "a").replace("ộ", "ô").replace("ở", "ơ")
     .replace("ờ", "ơ").replace("à", "à"), "windows-1258", "8bit"),
    ("koi8-r", "koi8_r", RUSSIAN, "koi8-r", "8bit"),
    ("KOI8-U", "koi8_u", UKRAINIAN, "koi8-u", "base64"),
    ("ibm866", "cp866", RUSSIAN, "ibm866", "8bit"),
    ("x-mac-cyrillic", "mac_cyrillic", RUSSIAN, "x-mac-cyrillic", "8bit"),
    ("x-mac-ukrainian", "mac_cyrillic", UKRAINIAN.replace("ґ", "г"), "x-mac-cyrillic", "8bit"),
    ("macintosh", "mac_roman", FRENCH, "macintosh", "quoted-printable"),
    ("x-mac-ce", "mac_latin2", CZECH, "x-mac-ce", "8bit"),
    ("x-mac-greek", "mac_greek", GREEK, "x-mac-greek", "8bit"),
    ("x-mac-icelandic", "mac_iceland", ICELANDIC, "x-mac-icelandic", "8bit"),
    ("windows-874", "cp874", THAI, "windows-874", "8bit"),
    ("tis-620", "tis_620", THAI, "windows-874", "base64"),
    ("shift_jis", "shift_jis", JAPANESE, "shift_jis", "8bit"),
    ("Shift-JIS", "cp932", JAPANESE + "①②③", "shift_jis", "base64"),
    ("euc-jp", "euc_jp", JAPANESE, "euc-jp", "8bit"),
    ("iso-2022-jp", "iso2022_jp", JAPANESE, "iso-2022-jp", "7bit"),
    ("gb2312", "gb2312", CHINESE_S, "gbk", "base64"),
    ("gbk", "gbk", CHINESE_S + "镕", "gbk", "8bit"),
    ("gb18030", "gb18030", CHINESE_S + "𠀀", "gb18030", "base64"),
    ("hz-gb-2312", "hz", CHINESE_S, "hz-gb-2312", "7bit"),
    ("big5", "big5", CHINESE_T, "big5", "8bit"),
    ("big5-hkscs", "big5hkscs", CHINESE_T, "big5", "base64"),
    ("euc-kr", "euc_kr", KOREAN, "euc-kr", "8bit"),
    ("ks_c_5601-1987", "cp949", KOREAN + " 똠방각하", "euc-kr", "base64"),
    ("iso-2022-kr", "iso2022_kr", KOREAN, "iso-2022-kr", "7bit"),
    ("johab", "johab", KOREAN, "johab", "8bit"),
    ("unicode-1-1-utf-7", "utf-7", GERMAN + " 日本", "utf-7", "7bit"),
    ("utf-16", "utf-16", GERMAN + " 😀", "utf-16", "base64"),
    ("utf-16le", "utf-16-le", RUSSIAN, "utf-16le", "base64"),
    ("cp850", "cp850", GERMAN, "ibm850", "8bit"),
    ("latin1", "latin-1", GERMAN, "iso-8859-1", "8bit"),
]


def transfer_encoded(data: bytes, encoding: str) -> bytes:
    if encoding == "base64":
        return b64(data)
    if encoding == "quoted-printable":
        return qp(data)
    return data


def add_charset_cases() -> None:
    for label, codec, text, reported, encoding in CHARSET_CASES:
        body = (text + "\n" + text + "\n").replace("\n", "\r\n").encode(codec)
        subject_text = text[:24].rstrip()
        subject = word(subject_text, codec, label, "Q" if encoding == "quoted-printable" else "B")
        name = "charset_" + label.lower().replace("_", "-")
        if name in CASES:  # the same label again, in another language
            name += "_" + codec
        message = (ENVELOPE.encode() + b"From: Sender <sender@example.org>\r\n"
                   + f"Subject: {subject}\r\nMessage-ID: <{name}@example.org>\r\n".encode()
                   + f"Content-Type: text/plain; charset=\"{label}\"\r\n"
                     f"Content-Transfer-Encoding: {encoding}\r\n\r\n".encode()
                   + transfer_encoded(body, encoding))
        add(name, message, subject=subject_text, from_addr="sender@example.org", body_contains=[text],
            charset=reported, content_type="text/plain", has_attach=0, message_id=f"<{name}@example.org>")


add_charset_cases()


def add_composed_hangul_cases() -> None:
    """KS X 1001 composed Hangul: '똠' is not among the 2,350 precomposed syllables, so
    EUC-KR writes it as eight bytes, the filler and three jamo (Python's euc_kr codec
    does). Labelled euc-kr it is one syllable again, in the body and in an encoded-word
    subject; labelled ks_c_5601-1987 (cp949, the Windows code page) the bytes are what
    cp949 says they are: the filler and three jamo."""
    text = "똠방각하 " + KOREAN
    subject = text[:12]
    data = (text + "\r\n").encode("euc_kr")
    assert b"\xa4\xd4" in data        # the composition sequence is really there

    def as_cp949(piece: str) -> str:
        return piece.encode("euc_kr").decode("cp949")

    assert as_cp949(text) != text
    for label, name, shown in (("euc-kr", "charset_euc-kr_composed_hangul", str),
                               ("EUC-KR", "charset_euc-kr_composed_hangul_upper_case", str),
                               ("ks_c_5601-1987", "charset_ks_c_5601-1987_composed_hangul", as_cp949)):
        message = (ENVELOPE.encode() + b"From: Sender <sender@example.org>\r\n"
                   + f"Subject: {word(subject, 'euc_kr', label)}\r\n"
                     f"Content-Type: text/plain; charset={label}\r\n"
                     "Content-Transfer-Encoding: 8bit\r\n\r\n".encode() + data)
        add(name, message, subject=shown(subject), from_addr="sender@example.org", body=shown(text) + "\n",
            charset="euc-kr", content_type="text/plain", has_attach=0)


add_composed_hangul_cases()


# --- structure: which part is the body, what counts as an attachment -------

HEAD = ENVELOPE + "From: Ann <ann@example.org>\r\nMessage-ID: <m1@example.org>\r\n"
PDF = b64(b"%PDF-1.4\n% fake pdf for tests\n" * 4).decode()
PNG = b64(b"\x89PNG\r\n\x1a\n" + bytes(range(256))).decode()


def add_structure_cases() -> None:
    add("plain_no_content_type", HEAD + "Subject: hello\r\n\r\nJust text.\r\nSecond line.\r\n",
        subject="hello", from_addr="ann@example.org", body="Just text.\nSecond line.\n", charset="us-ascii",
        content_type="text/plain", has_attach=0, message_id="<m1@example.org>")
    alternative = (HEAD + "Subject: alt\r\nContent-Type: multipart/alternative; boundary=\"alt-1\"\r\n\r\n"
                   "This is a multi-part message in MIME format.\r\n"
                   "--alt-1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlain version, caf\u00e9\r\n"
                   "--alt-1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>HTML version, caf\u00e9</p>\r\n"
                   "--alt-1--\r\nepilogue\r\n")
    add("alternative_prefers_html", alternative, subject="alt", from_addr="ann@example.org",
        body="<p>HTML version, caf\u00e9</p>", charset="utf-8", content_type="text/html", has_attach=0)
    add("alternative_prefer_plain", alternative, prefer="plain", subject="alt", from_addr="ann@example.org",
        body="Plain version, caf\u00e9", charset="utf-8", content_type="text/plain", has_attach=0)
    add("alternative_html_only_prefer_plain",
        HEAD + "Subject: only html\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n"
        "--b\r\nContent-Type: text/html\r\n\r\n<b>only</b>\r\n--b--\r\n",
        prefer="plain", subject="only html", from_addr="ann@example.org", body="<b>only</b>",
        charset="us-ascii", content_type="text/html", has_attach=0)
    add("mixed_alternative_related_base64",
        HEAD + "Subject: newsletter\r\nContent-Type: multipart/mixed; boundary=\"==mixed==\"\r\n\r\n"
        "--==mixed==\r\nContent-Type: multipart/alternative; boundary=\"==alt==\"\r\n\r\n"
        "--==alt==\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + b64("Plain news 📰\n".encode()).decode()
        + "--==alt==\r\nContent-Type: multipart/related; boundary=\"==rel==\"; type=\"text/html\"\r\n\r\n"
        "--==rel==\r\nContent-Type: text/html; charset=UTF-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + b64("<html><body>News 📰 <img src=\"cid:logo\"></body></html>\n".encode()).decode()
        + "--==rel==\r\nContent-Type: image/png; name=\"logo.png\"\r\nContent-ID: <logo>\r\n"
        "Content-Transfer-Encoding: base64\r\nContent-Disposition: inline; filename=\"logo.png\"\r\n\r\n" + PNG
        + "--==rel==--\r\n--==alt==--\r\n"
        "--==mixed==\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\n"
        "Content-Disposition: attachment; filename=\"report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + PDF + "--==mixed==--\r\n",
        subject="newsletter", from_addr="ann@example.org", body_contains=["News 📰 <img"], charset="utf-8",
        content_type="text/html", has_attach=2)
    add("mixed_text_attachment_not_body",
        HEAD + "Subject: files\r\nContent-Type: multipart/mixed; boundary=XyZ\r\n\r\n"
        "--XyZ\r\nContent-Type: text/plain; charset=us-ascii; name=\"notes.txt\"\r\n"
        "Content-Disposition: attachment; filename=\"notes.txt\"\r\n\r\nattached notes\r\n"
        "--XyZ\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nThe real body.\r\n"
        "--XyZ\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment\r\n\r\nxx\r\n"
        "--XyZ--\r\n",
        subject="files", from_addr="ann@example.org", body="The real body.", charset="us-ascii",
        content_type="text/plain", has_attach=2)
    add("mixed_first_displayable_skips_blank",
        HEAD + "Subject: blank cover\r\nContent-Type: multipart/mixed; boundary=q\r\n\r\n"
        "--q\r\nContent-Type: text/plain\r\n\r\n  \r\n\r\n"
        "--q\r\nContent-Type: text/plain\r\n\r\nSecond part has the words.\r\n--q--\r\n",
        subject="blank cover", from_addr="ann@example.org", body="Second part has the words.",
        charset="us-ascii", content_type="text/plain", has_attach=0)
    inner = ("From: Bob <bob@example.com>\r\nSubject: original\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
             "Content-Transfer-Encoding: quoted-printable\r\n\r\nThe forwarded text, caf=E9.\r\n")
    add("forwarded_rfc822_only",
        HEAD + "Subject: Fwd: original\r\nContent-Type: multipart/mixed; boundary=fw\r\n\r\n"
        "--fw\r\nContent-Type: message/rfc822\r\nContent-Disposition: inline\r\n\r\n" + inner + "--fw--\r\n",
        subject="Fwd: original", from_addr="ann@example.org", body="The forwarded text, caf\u00e9.",
        charset="iso-8859-1", content_type="text/plain", has_attach=0)
    add("forwarded_rfc822_attached_with_cover",
        HEAD + "Subject: Fwd: original\r\nContent-Type: multipart/mixed; boundary=fw\r\n\r\n"
        "--fw\r\nContent-Type: text/plain\r\n\r\nSee the message below.\r\n"
        "--fw\r\nContent-Type: message/rfc822; name=\"original.eml\"\r\n"
        "Content-Disposition: attachment; filename=\"original.eml\"\r\n\r\n" + inner + "--fw--\r\n",
        subject="Fwd: original", from_addr="ann@example.org", body="See the message below.",
        charset="us-ascii", content_type="text/plain", has_attach=1)
    add("forwarded_rfc822_attached_no_cover",
        HEAD + "Subject: Fwd: original\r\nContent-Type: multipart/mixed; boundary=fw\r\n\r\n"
        "--fw\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n" + inner + "--fw--\r\n",
        subject="Fwd: original", from_addr="ann@example.org", body="The forwarded text, caf\u00e9.",
        charset="iso-8859-1", content_type="text/plain", has_attach=1)
    add("top_level_rfc822",
        HEAD + "Subject: wrapped\r\nContent-Type: message/rfc822\r\n\r\n" + inner,
        subject="wrapped", from_addr="ann@example.org", body="The forwarded text, caf\u00e9.\n",
        charset="iso-8859-1", content_type="text/plain", has_attach=0)
    add("digest_default_rfc822",
        HEAD + "Subject: digest\r\nContent-Type: multipart/digest; boundary=d\r\n\r\n"
        "--d\r\n\r\nFrom: a@b.example\r\nSubject: one\r\n\r\nFirst digest item.\r\n"
        "--d\r\n\r\nFrom: c@d.example\r\nSubject: two\r\n\r\nSecond.\r\n--d--\r\n",
        subject="digest", from_addr="ann@example.org", body="First digest item.", charset="us-ascii",
        content_type="text/plain", has_attach=0)
    add("signed_first_part",
        HEAD + "Subject: signed\r\nContent-Type: multipart/signed; protocol=\"application/pgp-signature\";"
        " micalg=pgp-sha256; boundary=\"sig\"\r\n\r\n"
        "--sig\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSigned words.\r\n"
        "--sig\r\nContent-Type: application/pgp-signature; name=\"signature.asc\"\r\n\r\n"
        "-----BEGIN PGP SIGNATURE-----\r\nAAAA\r\n-----END PGP SIGNATURE-----\r\n--sig--\r\n",
        subject="signed", from_addr="ann@example.org", body="Signed words.", charset="utf-8",
        content_type="text/plain", has_attach=1)
    add("bounce_report",
        ENVELOPE + "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\nSubject: Undelivered Mail\r\n"
        "Content-Type: multipart/report; report-type=delivery-status; boundary=\"rep\"\r\n\r\n"
        "--rep\r\nContent-Description: Notification\r\nContent-Type: text/plain\r\n\r\n"
        "I'm sorry to have to inform you that your message could not be delivered.\r\n"
        "--rep\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n"
        "--rep\r\nContent-Type: text/rfc822-headers\r\n\r\nSubject: lost\r\n--rep--\r\n",
        subject="Undelivered Mail", from_addr="mailer-daemon@mx.example.net",
        body_contains=["could not be delivered"], charset="us-ascii", content_type="text/plain", has_attach=0)
    add("named_inline_image_counts",
        HEAD + "Subject: photo\r\nContent-Type: multipart/mixed; boundary=ph\r\n\r\n"
        "--ph\r\nContent-Type: text/plain\r\n\r\nLook!\r\n"
        "--ph\r\nContent-Type: image/jpeg; name*=utf-8''%E6%97%A5%E6%9C%AC.jpg\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n/9j/4AAQ\r\n"
        "--ph\r\nContent-Type: image/gif\r\nContent-Disposition: inline; filename*0=\"spacer\"; filename*1=\".gif\"\r\n"
        "\r\nR0lGOD\r\n"
        "--ph\r\nContent-Type: image/png\r\n\r\nunnamed inline image, not an attachment\r\n--ph--\r\n",
        subject="photo", from_addr="ann@example.org", body="Look!", charset="us-ascii",
        content_type="text/plain", has_attach=2)
    add("boundary_rfc2231_continuation",
        HEAD + "Subject: split boundary\r\nContent-Type: multipart/mixed;\r\n boundary*0=\"part\";\r\n"
        " boundary*1=\"-one\"\r\n\r\n--part-one\r\nContent-Type: text/plain\r\n\r\nfound it\r\n--part-one--\r\n",
        subject="split boundary", from_addr="ann@example.org", body="found it", charset="us-ascii",
        content_type="text/plain", has_attach=0)
    add("boundary_prefix_of_inner",
        HEAD + "Subject: prefix\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n"
        "--outer\r\nContent-Type: multipart/alternative; boundary=\"outer-inner\"\r\n\r\n"
        "--outer-inner\r\nContent-Type: text/plain\r\n\r\ninner plain\r\n"
        "--outer-inner\r\nContent-Type: text/html\r\n\r\n<i>inner html</i>\r\n--outer-inner--\r\n"
        "--outer\r\nContent-Type: application/zip; name=a.zip\r\n\r\nPK\r\n--outer--\r\n",
        subject="prefix", from_addr="ann@example.org", body="<i>inner html</i>", charset="us-ascii",
        content_type="text/html", has_attach=1)
    add("missing_close_delimiter",
        HEAD + "Subject: truncated\r\nContent-Type: multipart/alternative; boundary=t\r\n\r\n"
        "--t\r\nContent-Type: text/plain\r\n\r\nplain\r\n--t\r\nContent-Type: text/html\r\n\r\n<p>cut off",
        subject="truncated", from_addr="ann@example.org", body="<p>cut off", charset="us-ascii",
        content_type="text/html", has_attach=0)
    add("missing_boundary_parameter",
        HEAD + "Subject: no boundary\r\nContent-Type: multipart/mixed\r\n\r\n"
        "--guess-me\r\nContent-Type: text/plain\r\n\r\nguessed\r\n--guess-me--\r\n",
        subject="no boundary", from_addr="ann@example.org", body="guessed", charset="us-ascii",
        content_type="text/plain", has_attach=0)
    add("transport_padding_after_boundary",
        HEAD + "Subject: padding\r\nContent-Type: multipart/mixed; boundary=pad\r\n\r\n"
        "--pad  \t\r\nContent-Type: text/plain\r\n\r\npadded\r\n--pad--  \r\n",
        subject="padding", from_addr="ann@example.org", body="padded", charset="us-ascii",
        content_type="text/plain", has_attach=0)
    add("bare_lf_line_ends",
        (HEAD + "Subject: bare LF\r\nContent-Type: multipart/alternative; boundary=lf\r\n\r\n"
         "--lf\r\nContent-Type: text/plain\r\n\r\nunix lines\r\nsecond\r\n--lf--\r\n").replace("\r\n", "\n"),
        keep_line_ends=True, subject="bare LF", from_addr="ann@example.org", body="unix lines\nsecond",
        charset="us-ascii", content_type="text/plain", has_attach=0)
    add("content_type_junk_is_text_plain",
        HEAD + "Subject: junk type\r\nContent-Type: ;;;\r\n\r\nstill text\r\n",
        subject="junk type", from_addr="ann@example.org", body="still text\n", charset="us-ascii",
        content_type="text/plain", has_attach=0)
    add("only_attachment",
        HEAD + "Subject: scan\r\nContent-Type: application/pdf; name=scan.pdf\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n" + PDF,
        subject="scan", from_addr="ann@example.org", body="", charset="us-ascii",
        content_type="application/pdf", has_attach=1)
    add("encrypted_no_body",
        HEAD + "Subject: secret\r\nContent-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\";"
        " boundary=enc\r\n\r\n--enc\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n"
        "--enc\r\nContent-Type: application/octet-stream\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n--enc--\r\n",
        subject="secret", from_addr="ann@example.org", body="", charset="us-ascii",
        content_type="multipart/encrypted", has_attach=0)


add_structure_cases()


# --- transfer encodings ------------------------------------------------------

def single(subject: str, content_type: str, encoding: str, body: bytes, extra: str = "") -> bytes:
    return (HEAD + f"Subject: {subject}\r\nContent-Type: {content_type}\r\n"
            f"Content-Transfer-Encoding: {encoding}\r\n{extra}\r\n").encode() + body


def add_transfer_encoding_cases() -> None:
    text = "Zürich, Genève, Ålesund: déjà vu 😀"
    encoded = base64.b64encode(text.encode()).decode()
    add("base64_missing_padding", single("pad", "text/plain; charset=utf-8", "base64", encoded.rstrip("=").encode()),
        body=text, charset="utf-8", content_type="text/plain", subject="pad", has_attach=0)
    noisy = encoded[:10] + " \t" + encoded[10:20] + "!!\r\n" + encoded[20:30] + "\r\n  " + encoded[30:] + "\r\n\r\n"
    add("base64_line_noise", single("noise", "text/plain; charset=utf-8", "Base64", noisy.encode()),
        body=text, charset="utf-8", content_type="text/plain", subject="noise", has_attach=0)
    chunks = (base64.b64encode(b"first chunk, ") + b"\r\n" + base64.b64encode(b"second chunk") + b"\r\n")
    add("base64_concatenated_padded_chunks", single("chunks", "text/plain", "BASE64", chunks),
        body="first chunk, second chunk", charset="us-ascii", content_type="text/plain", subject="chunks",
        has_attach=0)
    qp_body = (b"Soft=\r\n break, lower hex caf=c3=a9, upper caf=C3=A9, stray = sign, "
               b"a=ZZ pair, trailing=\r\n")
    add("qp_soft_breaks_lower_hex_stray", single("qp", "text/plain; charset=utf-8", "quoted-printable", qp_body),
        body="Soft break, lower hex caf\u00e9, upper caf\u00e9, stray = sign, a=ZZ pair, trailing",
        charset="utf-8", content_type="text/plain", subject="qp", has_attach=0)
    add("seven_bit", single("7bit", "text/plain; charset=us-ascii", "7bit", b"seven bit text\r\n"),
        body="seven bit text\n", charset="us-ascii", content_type="text/plain", subject="7bit", has_attach=0)
    add("eight_bit", single("8bit", "text/plain; charset=utf-8", "8bit", "eight bit: ½ ✓\r\n".encode()),
        body="eight bit: ½ ✓\n", charset="utf-8", content_type="text/plain", subject="8bit", has_attach=0)
    add("binary", single("binary", "text/plain; charset=utf-8", "binary", "binary: ✓\x01\r\n".encode()),
        body="binary: ✓\x01\n", charset="utf-8", content_type="text/plain", subject="binary", has_attach=0)
    add("unknown_encoding_as_8bit",
        single("x-uue", "text/plain; charset=utf-8", "x-something", "unknown encoding: ✓\r\n".encode()),
        body="unknown encoding: ✓\n", charset="utf-8", content_type="text/plain", subject="x-uue", has_attach=0)
    add("nul_removed", single("nul", "text/plain; charset=utf-8", "8bit", b"before\x00after\r\n"),
        body="beforeafter\n", charset="utf-8", content_type="text/plain", subject="nul", has_attach=0)


add_transfer_encoding_cases()


# --- charset fallbacks -------------------------------------------------------

LONG_RUSSIAN = (RUSSIAN + " ") * 4
LONG_JAPANESE = JAPANESE * 4


def add_fallback_cases() -> None:
    def case(name, content_type, raw_body, **expected):
        add(name, single(name, content_type, "8bit", raw_body), subject=name, content_type="text/plain",
            has_attach=0, **expected)

    case("no_charset_utf8_detected", "text/plain", (FRENCH + "\r\n").encode(), charset="utf-8",
         body_contains=[FRENCH])
    case("no_charset_koi8r_detected", "text/plain", LONG_RUSSIAN.encode("koi8_r"), charset="koi8-r",
         body_contains=[RUSSIAN])
    case("wrong_label_utf8_is_cp1251", "text/plain; charset=utf-8", LONG_RUSSIAN.encode("cp1251"),
         charset="windows-1251", body_contains=[RUSSIAN])
    case("unknown_label_shift_jis", "text/plain; charset=x-no-such-charset", LONG_JAPANESE.encode("shift_jis"),
         charset="shift_jis", body_contains=[JAPANESE])
    case("unknown_8bit_label", "text/plain; charset=unknown-8bit", LONG_JAPANESE.encode("euc_jp"),
         charset="euc-jp", body_contains=[JAPANESE])
    case("latin1_label_with_c1_is_windows_1252", "text/plain; charset=iso-8859-1", SMART.encode("cp1252"),
         charset="windows-1252", body=SMART)
    case("latin1_label_on_utf8_text", "text/plain; charset=iso-8859-1", FRENCH.encode("utf-8"),
         charset="utf-8", body=FRENCH)
    case("undecodable_bytes_replaced", "text/plain; charset=shift_jis",
         LONG_JAPANESE.encode("shift_jis") + b"\x82\xff\xfd" + "おわり".encode("shift_jis"),
         charset="shift_jis", body_contains=[JAPANESE, "\ufffd", "おわり"])
    case("quoted_label_with_comment", "text/plain; charset=\"ISO-8859-15\" (euro)", EURO.encode("iso8859_15"),
         charset="iso-8859-15", body=EURO)
    add("html_meta_charset",
        single("meta", "text/html", "8bit",
               b"<html><head><meta http-equiv=\"Content-Type\" content=\"text/html; charset=windows-1251\">"
               b"</head><body>" + RUSSIAN.encode("cp1251") + b"</body></html>"),
        subject="meta", content_type="text/html", has_attach=0, charset="windows-1251", body_contains=[RUSSIAN])


add_fallback_cases()


# --- header fields -----------------------------------------------------------

def headers_only(fields: str | bytes, body: bytes = b"body\r\n") -> bytes:
    if isinstance(fields, str):
        fields = fields.encode("utf-8")
    return ENVELOPE.encode() + fields + b"\r\nContent-Type: text/plain\r\n\r\n" + body


def add_header_cases() -> None:
    def case(name, fields, **expected):
        add(name, headers_only(fields), **expected)

    case("subject_q_and_b_words", "From: a@example.org\r\nSubject: =?utf-8?q?Caf=C3=A9?= and "
         "=?ISO-8859-1?B?Q3LobWU=?= plain", subject="Café and Crème plain", from_addr="a@example.org")
    case("subject_adjacent_words_joined", "From: a@example.org\r\nSubject: =?utf-8?q?one?=\r\n =?utf-8?q?_two?="
         "   =?utf-8?b?IHRocmVl?=", subject="one two three")
    data = "日本語のメール".encode("utf-8")
    case("subject_multibyte_split_across_words",
         "From: a@example.org\r\nSubject: =?UTF-8?B?" + base64.b64encode(data[:4]).decode() + "?=\r\n =?UTF-8?B?"
         + base64.b64encode(data[4:]).decode() + "?=", subject="日本語のメール")
    jis = "件名のテスト".encode("iso2022_jp")
    case("subject_iso2022jp_word", "From: a@example.org\r\nSubject: =?ISO-2022-JP?B?"
         + base64.b64encode(jis).decode() + "?=", subject="件名のテスト")
    case("subject_unknown_charset_word", "From: a@example.org\r\nSubject: =?x-unknown?q?caf=C3=A9?= ok",
         subject="café ok")
    case("subject_malformed_words_left", "From: a@example.org\r\nSubject: =?utf-8?x?nope?= and =?utf-8?b?***?="
         " and =?broken", subject="=?utf-8?x?nope?= and =?utf-8?b?***?= and =?broken")
    case("subject_language_tag", "From: a@example.org\r\nSubject: =?utf-8*en?q?tagged?=", subject="tagged")
    case("subject_emoji_kept", "From: a@example.org\r\nSubject: =?utf-8?b?" + base64.b64encode(
        "Party 🎉🥳".encode()).decode() + "?=", subject="Party 🎉🥳")
    case("subject_cut_at_255", "From: a@example.org\r\nSubject: " + "é" * 300, subject="é" * 255)
    case("subject_encoded_word_in_word", "From: a@example.org\r\nSubject: Re:=?utf-8?q?caf=C3=A9?=",
         subject="Re:café")
    case("subject_whitespace_before_colon", "From: a@example.org\r\nSubject : obsolete syntax",
         subject="obsolete syntax")
    case("subject_folded", "From: a@example.org\r\nSubject: a long\r\n\tfolded subject", subject="a long\tfolded subject")
    case("raw_utf8_headers_rfc6532", "From: Jöran <Jöran@Exämple.org>\r\nSubject: Grüße aus Köln ✓",
         subject="Grüße aus Köln ✓", from_addr="jöran@exämple.org")
    case("raw_8bit_subject_cp1251", "From: a@example.org\r\nSubject: ".encode() + "Привет, как дела".encode("cp1251"),
         subject="Привет, как дела")
    add("raw_8bit_subject_body_charset_hint",
        ENVELOPE.encode() + b"From: a@example.org\r\nSubject: " + "Отчёт за май".encode("koi8_r")
        + b"\r\nContent-Type: text/plain; charset=koi8-r\r\n\r\n" + LONG_RUSSIAN.encode("koi8_r"),
        subject="Отчёт за май", charset="koi8-r", body_contains=[RUSSIAN])
    case("from_display_name_encoded", "From: =?utf-8?q?Fran=C3=A7ois?= <Francois@Example.COM>",
         from_addr="francois@example.com")
    case("from_quoted_name_with_angle", "From: \"Evil <evil@bad.example>\" <good@example.org>",
         from_addr="good@example.org")
    case("from_comments", "From: (sales (dept)) sales@example.org (Sales Team)", from_addr="sales@example.org")
    case("from_bare_with_name_no_angle", "From: John Smith john@example.org", from_addr="john@example.org")
    case("from_group_empty", "From: undisclosed-recipients:;", from_addr="")
    case("from_list_first", "From: a@example.org, b@example.org", from_addr="a@example.org")
    case("from_quoted_local_part", "From: \"john smith\"@example.org", from_addr="\"john smith\"@example.org")
    case("from_whole_address_encoded", "From: =?utf-8?b?" + base64.b64encode(
        b"Ann <ann@example.org>").decode() + "?=", from_addr="ann@example.org")
    case("from_missing", "Subject: no from", from_addr="", subject="no from")
    case("from_unparseable", "From: nobody at all", from_addr="")
    case("message_id_stripped", "From: a@example.org\r\nMessage-ID:   \r\n <id.123@example.org>  ",
         message_id="<id.123@example.org>")
    case("message_id_missing", "From: a@example.org", message_id="")
    case("header_case_insensitive", "FROM: A@Example.org\r\nsUbJeCt: mixed case", from_addr="a@example.org",
         subject="mixed case")
    case("first_subject_wins", "From: a@example.org\r\nSubject: first\r\nSubject: second", subject="first")


add_header_cases()


# --- header sections that run into the body without their empty line ----------
# A line that is neither a header field nor a continuation ends the header and is the
# first line of the body (RFC 5322 2.2; Python's email parser and MUAs read it so).

def add_missing_blank_line_cases() -> None:
    add("no_blank_line_top_level",
        HEAD + "Subject: straight in\r\nContent-Type: text/plain; charset=us-ascii\r\n"
        "Hello, this line is the body.\r\nSecond line: looks like a field, is body.\r\n",
        subject="straight in", from_addr="ann@example.org",
        body="Hello, this line is the body.\nSecond line: looks like a field, is body.\n",
        charset="us-ascii", content_type="text/plain")
    add("no_blank_line_in_parts",
        HEAD + "Subject: parts\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n"
        "--b1\r\nContent-Type: text/plain; charset=us-ascii\r\nPlain text, no empty line above.\r\n"
        "--b1\r\nContent-Type: text/html; charset=us-ascii\r\n<p>HTML, no empty line above.</p>\r\n"
        "--b1--\r\n",
        subject="parts", from_addr="ann@example.org", body="<p>HTML, no empty line above.</p>",
        charset="us-ascii", content_type="text/html")
    add("no_blank_line_part_without_header",
        HEAD + "Subject: bare part\r\nContent-Type: multipart/mixed; boundary=b2\r\n\r\n"
        "--b2\r\nJust text, and no header at all.\r\n--b2--\r\n",
        subject="bare part", from_addr="ann@example.org", body="Just text, and no header at all.",
        charset="us-ascii", content_type="text/plain")
    add("no_blank_line_after_continuation",
        HEAD + "Subject: folded\r\n  subject\r\nContent-Type: text/plain;\r\n\tcharset=utf-8\r\n"
        "Grüße, the body.\r\n",
        subject="folded  subject", from_addr="ann@example.org", body="Grüße, the body.\n",
        charset="utf-8", content_type="text/plain")
    add("no_blank_line_8bit_field_name_is_still_a_field",
        HEAD + "X-Grüße: a broken field name\r\nSubject: after it\r\nContent-Type: text/plain\r\n"
        "The body.\r\n",
        subject="after it", from_addr="ann@example.org", body="The body.\n", content_type="text/plain")


add_missing_blank_line_cases()


def write() -> None:
    for old in HERE.glob("*.eml"):
        old.unlink()
    expected = {}
    for name, (message, fields) in sorted(CASES.items()):
        (HERE / f"{name}.eml").write_bytes(message)
        expected[name] = fields
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False, sort_keys=True) + "\n",
                                        encoding="utf-8")
    print(f"{len(CASES)} cases, {len(CHARSET_CASES)} charset labels")


if __name__ == "__main__":
    write()
