-- miltertest scenarios for issue 16's matchers; tests/integration/test_miltertest_matchers.py runs each one:
--   miltertest -s matchers.lua -D MILTER=inet:PORT@127.0.0.1 -D CASE=rcpt_policy
-- Prints "CASE <name> OK" on success; any failed check prints "miltertest FAILED: ..." and exits 2
-- (check, open_connection, transaction, eom and run_case are prelude.lua's).
-- Behind the milter: a recipient_policy refusing recipients not in the users table (bob is one),
-- reject(smtp_comm(helo=^localhost$)) and tempfail(regexp_find(OUTBREAK-ME)).
dofile(debug.getinfo(1, "S").source:gsub("^@", ""):match("^(.-)[^/]*$") .. "prelude.lua")

-- MAIL, each { recipient, expected reply }, the headers and body; returns the end-of-message reply.
local function message(queue_id, recipients, body)
  transaction(queue_id, recipients, { { "From", "Alice <alice@example.test>" }, { "Subject", "test" } }, body)
  return eom()
end

local cases = {}

function cases.rcpt_policy()
  open_connection("helo.example.test")
  local final = message("RCP0001", { { "eve@example.test", SMFIR_REPLYCODE }, { "bob@example.test", SMFIR_CONTINUE } },
                        "hello\r\n")
  check(final == SMFIR_ACCEPT, "the message to bob is accepted: " .. string.char(final))
end

function cases.forged_helo()
  open_connection("localhost")
  local final = message("HEL0001", { { "bob@example.test", SMFIR_CONTINUE } }, "hello\r\n")
  check(final == SMFIR_REPLYCODE, "rejected: " .. string.char(final))
  check(mt.eom_check(conn, MT_SMTPREPLY, "550", "5.7.1", "Rejected by content filter: Forged.HELO (smtp_comm)"),
        "550 reply naming the HELO rule")
end

function cases.outbreak()
  open_connection("helo.example.test")
  local final = message("OUT0001", { { "bob@example.test", SMFIR_CONTINUE } }, "OUTBREAK-ME\r\n")
  check(final == SMFIR_REPLYCODE, "deferred: " .. string.char(final))
  check(mt.eom_check(conn, MT_SMTPREPLY, "451", "4.7.1", "Outbreak, try again later"), "the rule's 451 4.7.1")
end

run_case(cases, "rcpt_policy")
