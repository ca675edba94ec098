"""The read side: the mailbox API, its event stream, the inbox page (and, in the same
process, retention). It reads the table with connections of its own and never imports the
session, the wire or the writer."""
