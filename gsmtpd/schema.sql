-- gsmtpd: the table every accepted message lands in, one row per accepted recipient.
-- The seed's Guerrilla SMTPd schema, fixed and extended: utf8mb4 everywhere, mail as
-- LONGBLOB (no 64 KB cap, bytes kept exactly), body as LONGTEXT, a unique hash per row.
-- body is a VIRTUAL column: most bodies are the rest of mail without its CRs, and such a
-- row stores only body_start; any other body is stored in body_text (gsmtpd/row.py says why).
-- The columns are declared in gsmtpd/row.py; tests/test_row.py holds this file to it.
-- gsmtpd runs this itself on start (CREATE TABLE IF NOT EXISTS); you may run it by hand:
--   mysql -u root gsmtpd < schema.sql
CREATE TABLE IF NOT EXISTS `new_mail` (
  `mail_id` bigint unsigned NOT NULL AUTO_INCREMENT,
  `date` datetime NOT NULL COMMENT 'UTC time the message was accepted',
  `from` varchar(255) NOT NULL DEFAULT '' COMMENT 'address in the From: header, lower-cased',
  `to` varchar(255) NOT NULL COMMENT 'mailbox key: local@primary_host, else the recipient lower-cased',
  `subject` varchar(255) NOT NULL DEFAULT '' COMMENT 'Subject, RFC 2047 decoded',
  `body_text` longtext NOT NULL COMMENT 'the body, when it is not a slice of mail (else empty)',
  `body_start` int unsigned NULL COMMENT 'bytes of mail before the body, when body is the rest of mail without CRs',
  `body` longtext AS (IF(`body_start` IS NULL, `body_text`, CONVERT(REGEXP_REPLACE(SUBSTRING(`mail`, `body_start` + 1), '\r', '') USING utf8mb4))) VIRTUAL COMMENT 'chosen body part as UTF-8 text',
  `charset` varchar(64) NOT NULL DEFAULT '' COMMENT 'charset the body was converted from',
  `mail` longblob NOT NULL COMMENT 'raw message as received, Received: header prepended',
  `spam_score` float NOT NULL DEFAULT 0,
  `hash` char(32) NOT NULL COMMENT 'unique per row; the queue id of the 250 reply',
  `content_type` varchar(255) NOT NULL DEFAULT '',
  `recipient` varchar(255) NOT NULL COMMENT 'envelope recipient exactly as given in RCPT TO',
  `return_path` varchar(255) NOT NULL DEFAULT '' COMMENT 'MAIL FROM address, empty for <>',
  `ip_addr` varchar(45) NOT NULL DEFAULT '',
  `helo` varchar(255) NOT NULL DEFAULT '',
  `is_tls` tinyint(1) NOT NULL DEFAULT 0,
  `size` int unsigned NOT NULL DEFAULT 0 COMMENT 'message size in bytes as received',
  `has_attach` int NOT NULL DEFAULT 0 COMMENT 'number of attachments',
  `message_id` varchar(255) NOT NULL DEFAULT '',
  PRIMARY KEY (`mail_id`),
  UNIQUE KEY `hash` (`hash`),
  KEY `to` (`to`),
  KEY `date` (`date`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
