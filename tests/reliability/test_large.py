"""10 concurrent 20 MB messages (gsmtpd --max-size 25000000, so SIZE does not refuse them).
With MariaDB's default 16 MiB max_allowed_packet no row fits: each must be refused with
552 5.3.4; with the packet raised each must be stored whole. Never a 250 without the whole
message in its row; the server's peak RSS stays bounded and is reported."""
from __future__ import annotations

from .scenarios import Numbers, large_mail

N = Numbers()


def rss_bound(result) -> float:
    # Each message exists a few times over while it is parsed and written (raw, the body
    # decoded, the quoted INSERT): allow 6 copies of every concurrent message.
    return result.idle_mb + N.large * N.large_size * 6 / 1e6


def test_large_mail_over_the_default_packet_is_refused_552_never_250(gsmtpd_server, throwaway_mariadb,
                                                                     throwaway_store):
    result = large_mail(gsmtpd_server, throwaway_mariadb, throwaway_store, N).publish()
    report = result.reports[0]
    assert result.effective_packet == 16 << 20
    assert report.problems == []
    assert report.sent == N.large
    assert report.refused == {"552 5.3.4": N.large}, result.figures["replies"]
    assert report.stored == 0
    assert result.peak_mb <= rss_bound(result), result.figures


def test_large_mail_with_a_big_packet_is_stored_whole(gsmtpd_server, throwaway_mariadb, throwaway_store):
    try:
        result = large_mail(gsmtpd_server, throwaway_mariadb, throwaway_store, N, packet=N.large_packet).publish()
    finally:
        conn = throwaway_mariadb.connect()
        with conn.cursor() as cur:
            cur.execute("SET GLOBAL max_allowed_packet = DEFAULT")
        conn.close()
    report = result.reports[0]
    assert report.problems == []
    assert report.acked == N.large, result.figures["replies"]
    assert report.stored == N.large and result.figures["stored_broken"] == 0, result.figures
    assert result.peak_mb <= rss_bound(result), result.figures
