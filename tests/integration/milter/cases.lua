-- miltertest scenarios against mailsift's milter; tests/integration/test_miltertest.py runs each one:
--   miltertest -s cases.lua -D MILTER=inet:PORT@127.0.0.1 -D CASE=reject
-- Prints "CASE <name> OK" on success; any failed check prints "miltertest FAILED: ..." and exits 2
-- (check, done, expect, reply_is, open_connection, transaction, eom and run_case are prelude.lua's).
-- The scanners behind the milter (see the Python test) react to words in the body:
-- EICAR -> reject, "cheap pills" -> [SPAM] subject, TEMPFAIL-ME -> scanner failure,
-- DROP-ME -> drop, QUARANTINE-ME -> quarantine, ORIGINAL-BODY -> rewritten (rewriting milter only),
-- REDIRECT-ME -> deliver_to another address, COPY-ME -> deliver_to(copy=True), X-Spam-* headers removed.
dofile(debug.getinfo(1, "S").source:gsub("^@", ""):match("^(.-)[^/]*$") .. "prelude.lua")

local EICAR = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*\r\n"

local function open(version, actions, steps)
  open_connection("helo.example.test", version, actions, steps)
end

-- One transaction to rcpt up to the end of the body.
local function mail(queue_id, rcpt, subject, body)
  transaction(queue_id, { { rcpt } }, { { "From", "Alice <alice@example.test>" }, { "To", rcpt },
              { "Subject", subject }, { "Message-ID", "<" .. queue_id .. "@example.test>" } }, body)
end

local function message(queue_id, rcpt, subject, body)
  mail(queue_id, rcpt, subject, body)
  return eom()
end

local function no_edits(what)
  for _, op in ipairs({ MT_HDRADD, MT_HDRCHANGE, MT_HDRDELETE, MT_HDRINSERT, MT_BODYCHANGE, MT_QUARANTINE }) do
    check(not mt.eom_check(conn, op), what .. ": unexpected modification " .. tostring(op))
  end
end

local cases = {}

function cases.negotiate()
  open(nil, nil, nil)
  for name, flag in pairs({ ADDHDRS = SMFIF_ADDHDRS, CHGHDRS = SMFIF_CHGHDRS, CHGBODY = SMFIF_CHGBODY,
                            QUARANTINE = SMFIF_QUARANTINE, ADDRCPT = SMFIF_ADDRCPT, DELRCPT = SMFIF_DELRCPT }) do
    check(mt.test_action(conn, flag), "action " .. name .. " requested")
  end
  for name, flag in pairs({ CHGFROM = SMFIF_CHGFROM }) do
    check(not mt.test_action(conn, flag), "action " .. name .. " not requested")
  end
  for name, flag in pairs({ NOCONNECT = SMFIP_NOCONNECT, NOHELO = SMFIP_NOHELO, NOMAIL = SMFIP_NOMAIL,
                            NORCPT = SMFIP_NORCPT, NOHDRS = SMFIP_NOHDRS, NOBODY = SMFIP_NOBODY }) do
    check(not mt.test_option(conn, flag), "step " .. name .. " wanted")
  end
  check(mt.test_option(conn, SMFIP_NOUNKNOWN), "unknown commands not wanted")
  check(mt.test_option(conn, SMFIP_NODATA), "DATA not wanted")
  expect(SMFIR_ACCEPT, "clean message", message("NEG0001", "bob@example.test", "hello", "clean\r\n"))
end

function cases.limited()
  -- an MTA that lets filters add headers but not change them: the Subject edit is left out.
  -- NB: this miltertest build sends mt.negotiate()'s 3rd argument as the protocol steps and the
  -- 4th as the actions (the reverse of its manual): offer every step (0x1fffff) and ADDHDRS only.
  open(6, 0x1fffff, SMFIF_ADDHDRS)
  check(not mt.test_action(conn, SMFIF_CHGHDRS), "CHGHDRS not granted")
  check(message("LIM0001", "bob@example.test", "offer", "cheap pills\r\n") == SMFIR_ACCEPT, "accepted")
  check(mt.eom_check(conn, MT_HDRADD, "X-Mailsift-Checked", "const"), "header added")
  check(not mt.eom_check(conn, MT_HDRCHANGE), "no header change")
end

function cases.macros()
  open(nil, nil, nil)
  check(message("MACRO0001", "carol@example.test", "macros", "clean\r\n") == SMFIR_ACCEPT, "accepted")
end

function cases.accept()
  open(nil, nil, nil)
  expect(SMFIR_ACCEPT, "clean message", message("ACC0001", "bob@example.test", "hello", "clean body\r\n"))
  check(mt.eom_check(conn, MT_HDRADD, "X-Mailsift-Checked", "const"), "X-Mailsift-Checked added")
  check(mt.getheader(conn, "X-Mailsift-Checked", 0) == "const", "added header's value")
  check(not mt.eom_check(conn, MT_HDRCHANGE), "no header change")
  check(not mt.eom_check(conn, MT_BODYCHANGE), "no body change")
end

function cases.changeheader()
  open(nil, nil, nil)
  check(message("CHG0001", "bob@example.test", "an offer", "cheap pills\r\n") == SMFIR_ACCEPT, "accepted")
  check(mt.eom_check(conn, MT_HDRCHANGE, "Subject", "[SPAM] an offer"), "Subject changed")
  check(mt.eom_check(conn, MT_HDRADD, "X-Mailsift-Checked", "const"), "header added too")
  check(not mt.eom_check(conn, MT_HDRADD, "Subject"), "Subject changed, not added")
end

function cases.reject()
  open(nil, nil, nil)
  expect(SMFIR_REPLYCODE, "EICAR", message("REJ0001", "bob@example.test", "eicar", EICAR))
  check(mt.eom_check(conn, MT_SMTPREPLY, "550", "5.7.1", "Rejected by content filter: EICAR-Test (regexp_scan)"),
        "550 reply with mailsift's text")
  check(not mt.eom_check(conn, MT_HDRADD), "no header added to a rejected message")
end

function cases.reject_text()
  open(nil, nil, nil)
  expect(SMFIR_REPLYCODE, "custom reject", message("REJ0002", "bob@example.test", "pct", "PERCENT-ME\r\n"))
  check(mt.eom_check(conn, MT_SMTPREPLY, "550", "5.7.1", "100%% refused: Percent"), "'%' doubled for the MTA")
end

function cases.tempfail()
  open(nil, nil, nil)
  expect(SMFIR_REPLYCODE, "scanner failure", message("TMP0001", "bob@example.test", "tf", "TEMPFAIL-ME\r\n"))
  check(mt.eom_check(conn, MT_SMTPREPLY, "451", "4.3.0", "Content scanner temporarily unavailable, try again later"),
        "451 reply")
end

function cases.discard()
  open(nil, nil, nil)
  expect(SMFIR_DISCARD, "dropped", message("DRP0001", "bob@example.test", "drop", "DROP-ME\r\n"))
  no_edits("discard")
end

function cases.quarantine()
  open(nil, nil, nil)
  expect(SMFIR_DISCARD, "quarantined", message("QUA0001", "bob@example.test", "q", "QUARANTINE-ME\r\n"))
  no_edits("quarantine")
end

function cases.quarantine_hold()
  open(nil, nil, nil)
  expect(SMFIR_ACCEPT, "held", message("QUA0002", "bob@example.test", "q", "QUARANTINE-ME\r\n"))
  check(mt.eom_check(conn, MT_QUARANTINE, "mailsift: Quarantine-Me (regexp_scan)"), "SMFIR_QUARANTINE with reason")
end

function cases.body()
  open(nil, nil, nil)
  expect(SMFIR_ACCEPT, "rewritten", message("BOD0001", "bob@example.test", "b", "line one\r\nORIGINAL-BODY\r\n"))
  check(mt.eom_check(conn, MT_BODYCHANGE, "line one\r\nREPLACED-BODY\r\n"), "body replaced")
  check(mt.eom_check(conn, MT_HDRADD, "X-Mailsift-Checked", "const"), "header added too")
end

function cases.abort()
  -- a transaction aborted after its body, then another one on the same connection
  open(nil, nil, nil)
  mail("ABT0001", "dave@example.test", "aborted", EICAR)
  done(mt.abort(conn), "abort")
  expect(SMFIR_ACCEPT, "next message", message("ABT0002", "eve@example.test", "after abort", "clean\r\n"))
  check(mt.eom_check(conn, MT_HDRADD, "X-Mailsift-Checked", "const"), "header added")
end

function cases.toobig()
  open(nil, nil, nil)
  mail("BIG0001", "bob@example.test", "big", "start\r\n")
  for _ = 1, 3 do
    done(mt.bodystring(conn, string.rep("0123456789abcdef", 2048) .. "\r\n"), "more body")
    reply_is(SMFIR_CONTINUE, "body chunk")
  end
  expect(SMFIR_REPLYCODE, "too big", eom())
  check(mt.eom_check(conn, MT_SMTPREPLY, "552", "5.3.4", "Message size exceeds fixed maximum message size"),
        "552 reply")
end

function cases.redirect()
  open(nil, nil, nil)
  expect(SMFIR_ACCEPT, "redirected", message("RED0001", "bob@example.test", "r", "REDIRECT-ME\r\n"))
  check(mt.eom_check(conn, MT_RCPTADD, "<quarantine@example.test>"), "the new recipient added")
  check(mt.eom_check(conn, MT_RCPTDELETE, "<bob@example.test>"), "the original recipient removed")
end

function cases.copy()
  open(nil, nil, nil)
  expect(SMFIR_ACCEPT, "copied", message("CPY0001", "bob@example.test", "c", "COPY-ME\r\n"))
  check(mt.eom_check(conn, MT_RCPTADD, "<archive@example.test>"), "the copy's recipient added")
  check(not mt.eom_check(conn, MT_RCPTDELETE, "<bob@example.test>"), "the original recipient kept")
end

function cases.remove_headers()
  open(nil, nil, nil)
  transaction("RMH0001", { { "bob@example.test" } },
              { { "From", "alice@example.test" }, { "X-Spam-Flag", "NO" }, { "Subject", "forged" } }, "clean\r\n")
  expect(SMFIR_ACCEPT, "accepted", eom())
  check(mt.eom_check(conn, MT_HDRDELETE, "X-Spam-Flag"), "the forged X-Spam-Flag removed")
end

run_case(cases, "accept")
