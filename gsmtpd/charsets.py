"""Charset labels -> Python codecs, and bytes -> str that never raises.

Mail declares charsets with every label ever invented.  A label is first
normalized (lower case, quotes and junk stripped) and looked up in one table
built at import time from three sources, most specific first:

1. labels real mail uses that browsers do not know (ks_c_5601-1987 ...);
2. the WHATWG Encoding Standard label table (what browsers accept);
3. the names and aliases of Python's own text codecs.

Lookups never touch the codec registry at run time: an unknown label costs
one dict miss, not an import attempt, so a hostile message with a thousand
made-up charset names costs nothing.

Every decoded string ends up valid for MySQL utf8mb4: no NUL, no lone
surrogates (see `clean`).
"""

from __future__ import annotations

import codecs
import encodings
import encodings.aliases
import pkgutil
import re

import cchardet

# cchardet costs ~0.3 us per byte; the first 8 KiB say as much as the rest.
DETECT_SAMPLE = 8 * 1024
# Below this confidence cchardet is guessing; prefer the declared label.
DETECT_MIN_CONFIDENCE = 0.5
MAX_LABEL = 64


# --- the label table -------------------------------------------------------

# canonical name -> labels (WHATWG Encoding Standard, section 4.2 "Names and
# labels"), written as data here.  Deviations for mail, each deliberate:
# - iso-8859-1, us-ascii and iso-8859-9 keep their own names so the stored
#   charset says what was declared; `decode_declared` still reads C1 bytes
#   0x80-0x9F as windows-125x, as browsers and mail readers do;
# - the "replacement" group (iso-2022-kr, hz-gb-2312) is decoded for real:
#   browsers refuse them for XSS reasons that do not apply to stored mail;
# - WHATWG's euc-kr group is split: "euc-kr" itself also takes KS X 1001's
#   composed Hangul (see decode_strict), the KS C 5601 / cp949 labels do not; both
#   decode as cp949 otherwise and are stored as "euc-kr".
_WHATWG = {
    "utf-8": "unicode-1-1-utf-8 unicode11utf8 unicode20utf8 utf-8 utf8 x-unicode20utf8",
    "ibm866": "866 cp866 csibm866 ibm866",
    "iso-8859-2": "csisolatin2 iso-8859-2 iso-ir-101 iso8859-2 iso88592 iso_8859-2 iso_8859-2:1987 l2 latin2",
    "iso-8859-3": "csisolatin3 iso-8859-3 iso-ir-109 iso8859-3 iso88593 iso_8859-3 iso_8859-3:1988 l3 latin3",
    "iso-8859-4": "csisolatin4 iso-8859-4 iso-ir-110 iso8859-4 iso88594 iso_8859-4 iso_8859-4:1988 l4 latin4",
    "iso-8859-5": "csisolatincyrillic cyrillic iso-8859-5 iso-ir-144 iso8859-5 iso88595 iso_8859-5 iso_8859-5:1988",
    "iso-8859-6": "arabic asmo-708 csiso88596e csiso88596i csisolatinarabic ecma-114 iso-8859-6 iso-8859-6-e"
    " iso-8859-6-i iso-ir-127 iso8859-6 iso88596 iso_8859-6 iso_8859-6:1987",
    "iso-8859-7": "csisolatingreek ecma-118 elot_928 greek greek8 iso-8859-7 iso-ir-126 iso8859-7 iso88597"
    " iso_8859-7 iso_8859-7:1987 sun_eu_greek",
    "iso-8859-8": "csiso88598e csisolatinhebrew hebrew iso-8859-8 iso-8859-8-e iso-ir-138 iso8859-8 iso88598"
    " iso_8859-8 iso_8859-8:1988 visual",
    # RFC 1556: -i means logical order; the bytes are the same as iso-8859-8.
    "iso-8859-8-i": "csiso88598i iso-8859-8-i logical",
    "iso-8859-10": "csisolatin6 iso-8859-10 iso-ir-157 iso8859-10 iso885910 l6 latin6",
    "iso-8859-13": "iso-8859-13 iso8859-13 iso885913",
    "iso-8859-14": "iso-8859-14 iso8859-14 iso885914",
    "iso-8859-15": "csisolatin9 iso-8859-15 iso8859-15 iso885915 iso_8859-15 l9",
    "iso-8859-16": "iso-8859-16",
    "koi8-r": "cskoi8r koi koi8 koi8-r koi8_r",
    "koi8-u": "koi8-ru koi8-u",
    "macintosh": "csmacintosh mac macintosh x-mac-roman",
    "windows-874": "dos-874 iso-8859-11 iso8859-11 iso885911 tis-620 windows-874",
    "windows-1250": "cp1250 windows-1250 x-cp1250",
    "windows-1251": "cp1251 windows-1251 x-cp1251",
    "windows-1252": "cp1252 windows-1252 x-cp1252",
    "iso-8859-1": "cp819 csisolatin1 ibm819 iso-8859-1 iso-ir-100 iso8859-1 iso88591 iso_8859-1"
    " iso_8859-1:1987 l1 latin1",
    "us-ascii": "ansi_x3.4-1968 ascii us-ascii",
    "windows-1253": "cp1253 windows-1253 x-cp1253",
    "windows-1254": "cp1254 windows-1254 x-cp1254",
    "iso-8859-9": "csisolatin5 iso-8859-9 iso-ir-148 iso8859-9 iso88599 iso_8859-9 iso_8859-9:1989 l5 latin5",
    "windows-1255": "cp1255 windows-1255 x-cp1255",
    "windows-1256": "cp1256 windows-1256 x-cp1256",
    "windows-1257": "cp1257 windows-1257 x-cp1257",
    "windows-1258": "cp1258 windows-1258 x-cp1258",
    "x-mac-cyrillic": "x-mac-cyrillic x-mac-ukrainian",
    "gbk": "chinese csgb2312 csiso58gb231280 gb2312 gb_2312 gb_2312-80 gbk iso-ir-58 x-gbk",
    "gb18030": "gb18030",
    "big5": "big5 big5-hkscs cn-big5 csbig5 x-x-big5",
    "euc-jp": "cseucpkdfmtjapanese euc-jp x-euc-jp",
    "iso-2022-jp": "csiso2022jp iso-2022-jp",
    "shift_jis": "csshiftjis ms932 ms_kanji shift-jis shift_jis sjis windows-31j x-sjis",
    "euc-kr": "cseuckr euc-kr",
    "ks_c_5601-1987": "csksc56011987 iso-ir-149 korean ks_c_5601-1987 ks_c_5601-1989 ksc5601 ksc_5601"
    " windows-949",
    "iso-2022-kr": "csiso2022kr iso-2022-kr",
    "hz-gb-2312": "hz-gb-2312",
    "utf-16be": "unicodefffe utf-16be",
    "utf-16le": "csunicode iso-10646-ucs-2 ucs-2 unicode unicodefeff utf-16le",
}

# Labels seen in real mail that the WHATWG table lacks.
_MAIL_LABELS = {
    "utf-16": "utf-16",  # BOM decides the order (RFC 2781 4.3)
    "utf-32": "utf-32 utf-32le utf-32be",
    "utf-7": "utf-7 unicode-1-1-utf-7 x-unicode-2-0-utf-7 csunicode11utf7",  # RFC 2152
    "iso-2022-jp": "iso-2022-jp-1 iso-2022-jp-2 iso-2022-jp-3 csiso2022jp2",
    "euc-kr": "x-euc-kr euckr euc_kr",
    "ks_c_5601-1987": "uhc cp949 ks_c_5601 ksc5601-1987 x-windows-949 x-uhc",
    "gbk": "cp936 ms936 windows-936 gb2312-80 euc-cn x-euc-cn",
    "big5": "big5hkscs x-big5 windows-950 cp950 ms950",
    "shift_jis": "cp932 x-ms-cp932 shift-jis-2004 x-mac-japanese",
    "euc-jp": "euc-jis-2004 x-euc",
    "windows-874": "tis620 x-windows-874 cp874 ms874",
    "windows-1252": "x-ansi ansi",
    "us-ascii": "iso646-us ansi_x3.4-1986 us cp367 ibm367 csascii iso-ir-6 x-ascii",
    "x-mac-cyrillic": "mac-cyrillic maccyrillic",
    "x-mac-ce": "x-mac-ce x-mac-centraleurroman mac-centeuro maccentraleurope",
    "x-mac-greek": "x-mac-greek mac-greek macgreek",
    "x-mac-turkish": "x-mac-turkish mac-turkish macturkish",
    "x-mac-icelandic": "x-mac-icelandic mac-iceland maciceland",
    "x-mac-croatian": "x-mac-croatian mac-croatian",
    "x-mac-romanian": "x-mac-romanian mac-romanian",
    "x-mac-arabic": "x-mac-arabic mac-arabic",
    "x-mac-farsi": "x-mac-farsi mac-farsi",
    "macintosh": "mac-roman macroman",
    "gbk_mac": "x-mac-chinesesimp",
    "big5_mac": "x-mac-chinesetrad",
    "euc-kr_mac": "x-mac-korean",
    "johab": "johab x-johab",
    "ibm855": "ibm855 cp855 855",
    "ibm850": "ibm850 cp850 850",
    "ibm437": "ibm437 cp437 437",
    "koi8-t": "koi8-t",
    # Labels that name no charset at all: the bytes must be sniffed.
    "": "unknown-8bit x-unknown unknown 8bit x-user-defined default charset none",
}

# canonical name -> Python codecs to try in order (a superset first where
# the standard one is too strict for real mail).
_CODECS = {
    "utf-8": ("utf-8",),
    # WHATWG: the euc-kr/gbk/shift_jis/big5 decoders are the Windows
    # supersets; text labelled with the old names uses the extra characters.
    "euc-kr": ("cp949",),
    "ks_c_5601-1987": ("cp949",),
    "gbk": ("gb18030",),
    "gb18030": ("gb18030",),
    "shift_jis": ("cp932", "shift_jis_2004"),
    "big5": ("big5hkscs", "cp950"),
    "euc-jp": ("euc_jp", "euc_jis_2004"),
    "iso-2022-jp": ("iso2022_jp", "iso2022_jp_ext", "iso2022_jp_2", "iso2022_jp_3"),
    "iso-2022-kr": ("iso2022_kr",),
    "hz-gb-2312": ("hz",),
    "windows-874": ("cp874",),
    "iso-8859-8-i": ("iso8859_8",),
    "x-mac-cyrillic": ("mac_cyrillic",),
    "x-mac-ce": ("mac_latin2",),
    "x-mac-greek": ("mac_greek",),
    "x-mac-turkish": ("mac_turkish",),
    "x-mac-icelandic": ("mac_iceland",),
    "x-mac-croatian": ("mac_croatian",),
    "x-mac-romanian": ("mac_romanian",),
    "x-mac-arabic": ("mac_arabic",),
    "x-mac-farsi": ("mac_farsi",),
    "macintosh": ("mac_roman",),
    "gbk_mac": ("gb18030",),
    "big5_mac": ("big5hkscs",),
    "euc-kr_mac": ("cp949",),
    "utf-16le": ("utf-16-le",),
    "utf-16be": ("utf-16-be",),
    "utf-16": ("utf-16",),
    "utf-32": ("utf-32",),
    "utf-7": ("utf-7",),
}

# The Mac variants of CJK charsets are stored under their usual names.
_REPORTED_AS = {"gbk_mac": "gbk", "big5_mac": "big5", "euc-kr_mac": "euc-kr", "ks_c_5601-1987": "euc-kr"}

# Charsets in which pure ASCII bytes may still mean something else, so the
# "all bytes < 0x80" fast path must not be taken.
NOT_ASCII_COMPATIBLE = frozenset(
    {"utf-16", "utf-16le", "utf-16be", "utf-32", "utf-7", "iso-2022-jp", "iso-2022-kr", "hz-gb-2312"}
)

# Python's codec machinery can also name bytes->bytes transforms (base64,
# zlib ...) and escape codecs that are no charsets: never reachable from mail.
_NOT_CHARSETS = frozenset(
    {"idna", "punycode", "unicode_escape", "raw_unicode_escape", "undefined", "mbcs", "oem", "charmap",
     "utf_8_sig", "cp65001"}
)


def _python_codec_names() -> dict[str, str]:
    """Every name and alias of Python's text codecs, Python-normalized."""
    names = dict(encodings.aliases.aliases)
    for module in pkgutil.iter_modules(encodings.__path__):
        names.setdefault(module.name, module.name)
    result = {}
    for alias, module_name in names.items():
        if module_name in _NOT_CHARSETS or alias in _NOT_CHARSETS:
            continue
        try:
            info = codecs.lookup(module_name)
        except LookupError:
            continue
        if _is_text_codec(info.name):
            result[alias] = info.name
    return result


def _is_text_codec(name: str) -> bool:
    """False for a bytes-to-bytes or str-to-str codec (base64, zlib, rot13 ...): str.encode
    accepts text encodings only and raises LookupError for the others. (Non-empty bytes to
    bytes.decode would do too, but an empty bytes object is decoded without a lookup.)"""
    try:
        "".encode(name)
    except LookupError:
        return False
    except Exception:  # a text codec that refuses even "" (undefined): still text
        return True
    return True


def _build_label_table() -> dict[str, str]:
    table = {}
    for group in (_MAIL_LABELS, _WHATWG):  # the WHATWG table wins ties
        for canonical, labels in group.items():
            for label in labels.split():
                table[label] = canonical
    return table


_LABELS = _build_label_table()
_PYTHON_CODECS = _python_codec_names()
_LABEL_JUNK = re.compile(r"[^a-z0-9_.:+-].*", re.S)
_PY_NORMALIZE = re.compile(r"[^a-z0-9.]+")


def _python_name(label: str) -> str:
    """Python's own spelling: 'ISO-8859-2' -> 'iso_8859_2' (codecs.lookup's rule)."""
    return _PY_NORMALIZE.sub("_", label).strip("_")


def _canonical_by_codec() -> dict[str, str]:
    """Python codec name -> our canonical name, so 'latin10' reports 'iso-8859-16'."""
    result: dict[str, str] = {}
    for label, canonical in _LABELS.items():
        codec_name = _PYTHON_CODECS.get(_python_name(label))
        if canonical and codec_name:
            result.setdefault(codec_name, canonical)
    return result


_CANONICAL_BY_CODEC = _canonical_by_codec()
def normalize(label: str | bytes | None) -> str | None:
    """Label as declared -> canonical charset name, '' for "sniff it", None if unknown.

    RFC 2046 4.1.2 says charset names are case-insensitive; real mail adds
    quotes, trailing comments ("us-ascii (Plain)") and RFC 2231 language tags.
    """
    if label is None:
        return None
    if isinstance(label, bytes):
        label = label.decode("latin-1")
    label = label.strip().strip("\"'").strip().lower()[:MAX_LABEL]
    label = _LABEL_JUNK.sub("", label)
    if not label:
        return ""
    canonical = _LABELS.get(label)
    if canonical is not None:
        return canonical
    codec_name = _PYTHON_CODECS.get(_python_name(label))
    if codec_name is None:
        return None
    # A spelling only Python knows ('latin10'), or a charset only Python
    # knows ('cp1125'): report ours, else Python's name for it.
    return _CANONICAL_BY_CODEC.get(codec_name, codec_name)


def python_codecs(canonical: str) -> tuple[str, ...]:
    codec_list = _CODECS.get(canonical)
    if codec_list is not None:
        return codec_list
    return (_PYTHON_CODECS.get(_python_name(canonical), canonical),)


def reported_name(canonical: str) -> str:
    return _REPORTED_AS.get(canonical, canonical)


# --- decoding --------------------------------------------------------------

# WHATWG windows-1252 (the decoder browsers use for iso-8859-1 and us-ascii):
# the five bytes cp1252 leaves undefined map to the C1 controls, so the
# table decodes every byte and never fails.
_WINDOWS_1252 = "".join(bytes([b]).decode("cp1252", "ignore") or chr(b) for b in range(256))
_C1_BYTES = re.compile(rb"[\x80-\x9f]")
# Labels whose C1 range is, in practice, the Windows superset.
_WINDOWS_SUPERSET = {"iso-8859-1": "windows-1252", "us-ascii": "windows-1252", "iso-8859-9": "windows-1254"}
# Labels that mailers stamp on UTF-8 text without looking.
_OFTEN_MISLABELLED_UTF8 = frozenset({"iso-8859-1", "us-ascii", "windows-1252"})


def _decode_windows_1252(data: bytes) -> str:
    return codecs.charmap_decode(data, "strict", _WINDOWS_1252)[0]


# KS X 1001 annex 3: a syllable outside the 2,350 precomposed ones is eight bytes, the
# Hangul filler (0xA4D4) and three jamo. Python's euc_kr codec makes them one syllable;
# cp949 (the WHATWG decoder, needed for the UHC extension) shows the filler and jamo.
_HANGUL_FILLER = b"\xa4\xd4"


def decode_strict(data: bytes, canonical: str) -> str | None:
    """Decode with the charset's codecs, or None if the bytes do not fit it."""
    if canonical == "windows-1252":
        return _decode_windows_1252(data)
    if canonical == "euc-kr" and _HANGUL_FILLER in data:
        try:
            return data.decode("euc_kr")
        except UnicodeDecodeError:
            pass        # UHC characters too, or a lone filler: cp949, jamo and all
    for codec_name in python_codecs(canonical):
        try:
            return data.decode(codec_name)
        except (UnicodeDecodeError, LookupError):
            continue
    return None


def _lenient(data: bytes, canonical: str) -> str:
    for codec_name in python_codecs(canonical):
        try:
            return data.decode(codec_name, "replace")
        except LookupError:
            continue
    return data.decode("utf-8", "replace")


def _decode_declared(data: bytes, canonical: str) -> tuple[str, str] | None:
    """The declared charset, if the bytes fit it."""
    if canonical in _OFTEN_MISLABELLED_UTF8:
        text = _utf8_if_plausible(data)
        if text is not None:
            return text, "utf-8"
    superset = _WINDOWS_SUPERSET.get(canonical)
    if superset is not None and _C1_BYTES.search(data):
        # RFC 2046 4.1.2 wants the label obeyed, but C1 controls in
        # iso-8859-1 text are always Windows quotes and dashes in practice.
        text = decode_strict(data, superset)
        if text is not None:
            return text, superset
    text = decode_strict(data, canonical)
    if text is None:
        return None
    return text, reported_name(canonical)


def _utf8_if_plausible(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def detect(data: bytes) -> str | None:
    """cchardet's guess as a canonical name, or None if it has no idea."""
    try:
        guess = cchardet.detect(data[:DETECT_SAMPLE])
    except Exception:  # a C extension: never let its failure reach the server
        return None
    name = guess.get("encoding")
    if not name or (guess.get("confidence") or 0) < DETECT_MIN_CONFIDENCE:
        return None
    return normalize(name) or None


def decode(data: bytes, label: str | bytes | None) -> tuple[str, str]:
    """Bytes in the declared charset -> (text, charset actually used).

    Order: the declared label (RFC 2046 4.1.2); else UTF-8, which random
    8-bit text almost never passes; else cchardet; else the declared codec
    or UTF-8 with U+FFFD for what does not decode.  Never raises.
    """
    canonical = normalize(label)
    if canonical and data.isascii() and canonical not in NOT_ASCII_COMPATIBLE:
        return data.decode("ascii"), reported_name(canonical)
    if not canonical and data.isascii():
        # RFC 2045 5.2: no charset means us-ascii.
        return data.decode("ascii"), "us-ascii"
    if canonical:
        decoded = _decode_declared(data, canonical)
        if decoded is not None:
            return decoded
    return _decode_undeclared(data, canonical)


def _decode_undeclared(data: bytes, declared: str | None) -> tuple[str, str]:
    if declared != "utf-8":
        text = _utf8_if_plausible(data)
        if text is not None:
            return text, "utf-8"
    guess = detect(data)
    if guess and guess != declared:
        text = decode_strict(data, guess)
        if text is not None:
            return text, reported_name(guess)
    fallback = declared or guess or "utf-8"
    return _lenient(data, fallback), reported_name(fallback)


_SURROGATES = re.compile("[\ud800-\udfff]")


def clean(text: str) -> str:
    """Make text storable in MySQL utf8mb4: drop NUL, replace lone surrogates."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = _SURROGATES.sub("\ufffd", text)
    return text
