-- wrk script for scripts/bench: sends pre-signed, unique Pelorus `deploytime`
-- deliveries to hookgauge's POST /pelorus/webhook.
--
-- The pool file is written by bench/hookbench/pool.py: fixed-length lines
--   <64 hex HMAC-SHA256 signature> <SP> <exact JSON body> <LF>
-- Each wrk thread owns a disjoint slice of the BENCH_POOL_COUNT lines from
-- line BENCH_POOL_FIRST on, seeks to it in init() and reads one line per
-- request, so no delivery is sent twice and memory stays flat however large
-- the pool is. Two wrk processes given disjoint ranges of one pool (scenario
-- pg2) send disjoint deliveries too.
--
-- When a thread exhausts its slice it no longer sends webhooks: its
-- connections send a cheap filler (GET /bench/drained, which hookgauge answers
-- 404) until every webhook it sent has been answered, then the thread writes
-- BENCH_MARKER_DIR/done.<id> (when set) and stops with wrk.thread:stop().
-- That makes "send exactly N deliveries and wait for every answer" possible;
-- the caller interrupts wrk (SIGINT) once all threads have written a marker.
--
-- Configuration (environment, set by the harness):
--   BENCH_POOL_FILE   pool file (required)
--   BENCH_POOL_COUNT  number of lines of the pool to use (required)
--   BENCH_POOL_FIRST  first line of the pool to use, 0-based (optional, 0)
--   BENCH_LINE_LEN    length of one pool line in bytes, newline included (required)
--   BENCH_THREADS     wrk -t value, to split the pool into slices (required)
--   BENCH_MARKER_DIR  directory for per-thread "done" markers (optional)
--
-- done() prints "bench-result key=value" lines that the harness (bench/hookbench)
-- parses: per-status counts of webhook answers (fillers excluded), requests
-- sent, fillers, threads that exhausted their slice, wrk's socket errors, the
-- requests and duration of the run, and the latency distribution in
-- microseconds: mean, max and the percentiles 50, 75, 90, 99, 99.9 and 99.99
-- (latency_p99_9_us is p99.9).

local function env_number(name)
   local v = tonumber(os.getenv(name) or "")
   if v == nil then
      error(name .. " must be set to a number")
   end
   return v
end

-- ---------------------------------------------------------------- setup ---
-- Runs in wrk's main Lua state once per thread, before that thread's init().

local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

-- -------------------------------------------------------------- running ---
-- Everything below runs in each thread's own Lua state.

local pool           -- file handle positioned inside this thread's slice
local remaining = 0  -- lines of the slice not yet read
local line_len
local prefix         -- request line and fixed headers, up to the signature value
local filler         -- request sent once the slice is exhausted
local ahead          -- a line read but not yet consumed (see verify below)
local verify_pending = false
local marker_dir
local finished = false

-- Counters read by done() through thread:get().
sent = 0             -- webhooks handed to wrk
answered = 0         -- webhook answers received
fillers = 0          -- filler requests handed to wrk
exhausted = 0        -- 1 once the slice is used up
statuses = {}        -- webhook answers by HTTP status

function init(args)
   local file = os.getenv("BENCH_POOL_FILE") or error("BENCH_POOL_FILE must be set")
   local count = env_number("BENCH_POOL_COUNT")
   local offset = os.getenv("BENCH_POOL_FIRST") or ""
   if offset == "" then offset = "0" end
   offset = tonumber(offset)
   if offset == nil or offset < 0 then
      error("BENCH_POOL_FIRST must be a line number (0 or more)")
   end
   local nthreads = env_number("BENCH_THREADS")
   line_len = env_number("BENCH_LINE_LEN")
   marker_dir = os.getenv("BENCH_MARKER_DIR")
   if marker_dir == "" then marker_dir = nil end

   -- Disjoint slice [first, last) of the pool for this thread.
   local first = offset + math.floor(count * id / nthreads)
   local last = offset + math.floor(count * (id + 1) / nthreads)
   remaining = last - first
   pool = assert(io.open(file, "rb"))
   assert(pool:seek("set", first * line_len))

   local host = wrk.host
   if wrk.port then host = host .. ":" .. wrk.port end
   -- Body length: line minus signature (64), separator (1) and newline (1).
   local body_len = line_len - 66
   prefix = "POST /pelorus/webhook HTTP/1.1\r\n"
      .. "Host: " .. host .. "\r\n"
      .. "User-Agent: Pelorus-Webhook/bench\r\n"
      .. "X-Pelorus-Event: deploytime\r\n"
      .. "Content-Type: application/json\r\n"
      .. "Content-Length: " .. body_len .. "\r\n"
      .. "X-Hub-Signature-256: sha256="
   filler = "GET /bench/drained HTTP/1.1\r\nHost: " .. host .. "\r\n\r\n"

   -- wrk 4.1 calls request() once on thread 0, before the run, only to check
   -- that it returns a parseable request; that request is never sent. The
   -- first call on thread 0 therefore peeks at the next line without
   -- consuming it, so no delivery of the pool is skipped.
   verify_pending = (id == 0)
end

local function read_line()
   if remaining == 0 then return nil end
   local line = pool:read(line_len)
   if line == nil or #line ~= line_len then
      error("pool file is shorter than BENCH_POOL_COUNT lines")
   end
   remaining = remaining - 1
   return line
end

local function build(line)
   -- line = signature .. " " .. body .. "\n"
   return prefix .. line:sub(1, 64) .. "\r\n\r\n" .. line:sub(66, line_len - 1)
end

local function finish()
   if finished then return end
   finished = true
   if marker_dir then
      local f = io.open(marker_dir .. "/done." .. id, "w")
      if f then
         f:write(sent, "\n")
         f:close()
      end
   end
   wrk.thread:stop()
end

function request()
   if verify_pending then
      verify_pending = false
      ahead = read_line()
      if ahead then return build(ahead) end
      return filler
   end
   local line = ahead or read_line()
   ahead = nil
   if line then
      sent = sent + 1
      return build(line)
   end
   exhausted = 1
   fillers = fillers + 1
   return filler
end

function response(status, headers, body)
   if status == 404 and fillers > 0 then
      -- Answer to a filler: not a webhook answer.
   else
      answered = answered + 1
      statuses[status] = (statuses[status] or 0) + 1
   end
   if exhausted == 1 and answered >= sent then
      finish()
   end
end

-- ----------------------------------------------------------------- done ---
-- Runs in the main Lua state after the run.

function done(summary, latency, requests)
   local total = { sent = 0, answered = 0, fillers = 0, exhausted = 0 }
   local by_status = {}
   for _, thread in ipairs(threads) do
      total.sent = total.sent + (thread:get("sent") or 0)
      total.answered = total.answered + (thread:get("answered") or 0)
      total.fillers = total.fillers + (thread:get("fillers") or 0)
      total.exhausted = total.exhausted + (thread:get("exhausted") or 0)
      for status, n in pairs(thread:get("statuses") or {}) do
         by_status[status] = (by_status[status] or 0) + n
      end
   end

   local s2xx, non2xx = 0, 0
   local codes = {}
   for status, n in pairs(by_status) do
      if status >= 200 and status < 300 then
         s2xx = s2xx + n
      else
         non2xx = non2xx + n
      end
      table.insert(codes, string.format("%d:%d", status, n))
   end
   table.sort(codes)

   local e = summary.errors
   local out = {
      string.format("sent=%d", total.sent),
      string.format("answered=%d", total.answered),
      string.format("s2xx=%d", s2xx),
      string.format("s202=%d", by_status[202] or 0),
      string.format("s200=%d", by_status[200] or 0),
      string.format("non2xx=%d", non2xx),
      string.format("fillers=%d", total.fillers),
      string.format("exhausted_threads=%d", total.exhausted),
      string.format("statuses=%s", table.concat(codes, ",")),
      string.format("errors_connect=%d", e.connect),
      string.format("errors_read=%d", e.read),
      string.format("errors_write=%d", e.write),
      string.format("errors_timeout=%d", e.timeout),
      string.format("requests=%d", summary.requests),
      string.format("duration_us=%d", summary.duration),
      string.format("latency_mean_us=%.1f", latency.mean),
      string.format("latency_max_us=%d", latency.max),
   }
   -- wrk --latency prints 50/75/90/99 only, rounded; these are exact (us).
   for _, p in ipairs({ 50, 75, 90, 99, 99.9, 99.99 }) do
      table.insert(out, string.format("latency_p%s_us=%d",
         (string.format("%g", p):gsub("%.", "_")), latency:percentile(p)))
   end
   for _, kv in ipairs(out) do
      io.write("bench-result ", kv, "\n")
   end
end
