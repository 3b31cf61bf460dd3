-- wrk script for scripts/bench's flood scenario: deliveries with a forged
-- signature (the right length, the wrong key) to POST /pelorus/webhook,
-- each a different body so that nothing is cached. hookgauge must answer
-- every one 401 while valid senders keep being served.
--
-- done() prints "bench-result flood_<status>=<count>" lines.

local counter = 0
local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   statuses = {}
end

function request()
   counter = counter + 1
   local body = string.format(
      '{"app":"flood","namespace":"flood","image_sha":"sha256:%064d","timestamp":1764500000}',
      counter)
   return wrk.format("POST", nil, {
      ["Content-Type"] = "application/json",
      ["User-Agent"] = "Pelorus-Webhook/flood",
      ["X-Pelorus-Event"] = "deploytime",
      ["X-Hub-Signature-256"] = "sha256=" .. string.rep("0", 64),
   }, body)
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local total = {}
   for _, thread in ipairs(threads) do
      for status, n in pairs(thread:get("statuses") or {}) do
         total[status] = (total[status] or 0) + n
      end
   end
   for status, n in pairs(total) do
      io.write(string.format("bench-result flood_%d=%d\n", status, n))
   end
end
