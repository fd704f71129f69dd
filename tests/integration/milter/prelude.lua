-- Shared by cases.lua and matchers.lua, which load it first (from their own folder):
--   dofile(debug.getinfo(1, "S").source:gsub("^@", ""):match("^(.-)[^/]*$") .. "prelude.lua")
-- It gives them (as globals) the checks, a connection up to HELO, one transaction up to the end
-- of its body, eom(), and run_case(cases, default): runs cases[CASE or default], prints "CASE <name> OK" on success;
-- any failed check prints "miltertest FAILED: ..." and exits 2.
-- tests/helpers/miltertest.py runs a script's case: miltertest -s SCRIPT -D MILTER=inet:PORT@127.0.0.1 -D CASE=name
sock = MILTER or "inet:3333@127.0.0.1"
conn = nil
mt.set_timeout(10)

function check(ok, what)
  if not ok then error("check failed: " .. what) end
end

function done(err, what)
  check(err == nil, what .. ": " .. tostring(err))
end

function expect(expected, what, got)
  check(got == expected, string.format("%s: reply '%s', expected '%s'", what, string.char(got), string.char(expected)))
end

function reply_is(expected, what)
  expect(expected, what, mt.getreply(conn))
end

-- Connect and negotiate (nil: miltertest's defaults), then the client's address and its HELO.
function open_connection(helo, version, actions, steps)
  conn = mt.connect(sock, 3, 0.5)
  check(conn ~= nil, "mt.connect(" .. sock .. ")")
  done(mt.negotiate(conn, version, actions, steps), "negotiate")
  mt.macro(conn, SMFIC_CONNECT, "j", "mx.example.test", "{daemon_name}", "miltertest")
  done(mt.conninfo(conn, "client.example.test", "192.0.2.10"), "conninfo")
  reply_is(SMFIR_CONTINUE, "connect")
  done(mt.helo(conn, helo), "helo")
  reply_is(SMFIR_CONTINUE, "helo")
end

-- One transaction from alice up to the end of the body: recipients are { address, expected reply
-- (nil: SMFIR_CONTINUE) }, headers { name, value }; eom() ends it and returns the final reply.
function transaction(queue_id, recipients, headers, body)
  mt.macro(conn, SMFIC_MAIL, "i", queue_id, "{mail_addr}", "alice@example.test")
  done(mt.mailfrom(conn, "<alice@example.test>", "BODY=8BITMIME"), "mailfrom")
  reply_is(SMFIR_CONTINUE, "mail")
  for _, r in ipairs(recipients) do
    done(mt.rcptto(conn, "<" .. r[1] .. ">"), "rcptto " .. r[1])
    reply_is(r[2] or SMFIR_CONTINUE, "rcpt " .. r[1])
  end
  for _, h in ipairs(headers) do
    done(mt.header(conn, h[1], h[2]), "header " .. h[1])
    reply_is(SMFIR_CONTINUE, "header " .. h[1])
  end
  done(mt.eoh(conn), "eoh")
  reply_is(SMFIR_CONTINUE, "eoh")
  done(mt.bodystring(conn, body), "body")
  reply_is(SMFIR_CONTINUE, "body")
end

function eom()
  done(mt.eom(conn), "eom")
  return mt.getreply(conn)
end

function run_case(cases, default)
  local case = CASE or default
  local ok, err = pcall(function()
    local run = cases[case]
    check(run ~= nil, "unknown CASE " .. case)
    run()
    mt.disconnect(conn)
    conn = nil
    mt.echo("CASE " .. case .. " OK")
  end)
  if not ok then
    io.stderr:write("miltertest FAILED: " .. tostring(err) .. "\n")
    if conn ~= nil then pcall(mt.disconnect, conn) end
    os.exit(2)
  end
end
