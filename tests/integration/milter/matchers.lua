-- miltertest scenarios for issue 16's matchers; tests/integration/test_miltertest_matchers.py runs each one:
--   miltertest -s matchers.lua -D MILTER=inet:PORT@127.0.0.1 -D CASE=rcpt_policy
-- Prints "CASE <name> OK" on success; any failed check raises and miltertest exits non-zero.
-- Behind the milter: a recipient_policy refusing recipients not in the users table (bob is one),
-- reject(smtp_comm(helo=^localhost$)) and tempfail(regexp_find(OUTBREAK-ME)).
local sock = MILTER or "inet:3333@127.0.0.1"
local case = CASE or "rcpt_policy"
mt.set_timeout(10)

local conn = nil

local function check(ok, what)
  if not ok then error("check failed: " .. what) end
end

local function done(err, what)
  check(err == nil, what .. ": " .. tostring(err))
end

local function reply_is(expected, what)
  local got = mt.getreply(conn)
  check(got == expected, string.format("%s: reply '%s', expected '%s'", what, string.char(got), string.char(expected)))
end

local function open(helo)
  conn = mt.connect(sock, 3, 0.5)
  check(conn ~= nil, "mt.connect(" .. sock .. ")")
  done(mt.negotiate(conn, nil, nil, nil), "negotiate")
  done(mt.conninfo(conn, "client.example.test", "192.0.2.10"), "conninfo")
  reply_is(SMFIR_CONTINUE, "connect")
  done(mt.helo(conn, helo), "helo")
  reply_is(SMFIR_CONTINUE, "helo")
end

-- MAIL, each RCPT with its expected reply, the headers and body; returns the end-of-message reply.
local function message(queue_id, recipients, body)
  mt.macro(conn, SMFIC_MAIL, "i", queue_id)
  done(mt.mailfrom(conn, "<alice@example.test>"), "mailfrom")
  reply_is(SMFIR_CONTINUE, "mail")
  for _, r in ipairs(recipients) do
    done(mt.rcptto(conn, "<" .. r[1] .. ">"), "rcptto " .. r[1])
    reply_is(r[2], "rcpt " .. r[1])
  end
  for _, h in ipairs({ { "From", "Alice <alice@example.test>" }, { "Subject", "test" } }) do
    done(mt.header(conn, h[1], h[2]), "header " .. h[1])
    reply_is(SMFIR_CONTINUE, "header " .. h[1])
  end
  done(mt.eoh(conn), "eoh")
  reply_is(SMFIR_CONTINUE, "eoh")
  done(mt.bodystring(conn, body), "body")
  reply_is(SMFIR_CONTINUE, "body")
  done(mt.eom(conn), "eom")
  return mt.getreply(conn)
end

local cases = {}

function cases.rcpt_policy()
  open("helo.example.test")
  local final = message("RCP0001", { { "eve@example.test", SMFIR_REPLYCODE }, { "bob@example.test", SMFIR_CONTINUE } },
                        "hello\r\n")
  check(final == SMFIR_ACCEPT, "the message to bob is accepted: " .. string.char(final))
end

function cases.forged_helo()
  open("localhost")
  local final = message("HEL0001", { { "bob@example.test", SMFIR_CONTINUE } }, "hello\r\n")
  check(final == SMFIR_REPLYCODE, "rejected: " .. string.char(final))
  check(mt.eom_check(conn, MT_SMTPREPLY, "550", "5.7.1", "Rejected by content filter: Forged.HELO (smtp_comm)"),
        "550 reply naming the HELO rule")
end

function cases.outbreak()
  open("helo.example.test")
  local final = message("OUT0001", { { "bob@example.test", SMFIR_CONTINUE } }, "OUTBREAK-ME\r\n")
  check(final == SMFIR_REPLYCODE, "deferred: " .. string.char(final))
  check(mt.eom_check(conn, MT_SMTPREPLY, "451", "4.7.1", "Outbreak, try again later"), "the rule's 451 4.7.1")
end

local function main()
  local run = cases[case]
  check(run ~= nil, "unknown CASE " .. case)
  run()
  mt.disconnect(conn)
  print("CASE " .. case .. " OK")
end

local ok, err = pcall(main)
if not ok then
  io.stderr:write("miltertest FAILED: " .. tostring(err) .. "\n")
  if conn ~= nil then pcall(mt.disconnect, conn) end
  os.exit(2)
end
