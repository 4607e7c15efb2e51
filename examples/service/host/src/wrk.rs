//! Runs `wrk` against the service and reads its report: requests, failures, latency
//! percentiles and throughput.

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::Error;

/// The requests `wrk` sends, in turn: prices of every product for members and guests, and
/// the catalog page every tenth request.
const SCRIPT: &str = r#"-- Written by hotreload-service's load run.
local skus = { "tea", "mug", "kettle", "teapot", "scarf" }
local n = 0
request = function()
  n = n + 1
  if n % 10 == 0 then
    return wrk.format("GET", "/")
  end
  local who = (n % 3 == 0) and "guest-" or "member-"
  return wrk.format("GET", "/price/" .. skus[n % #skus + 1] .. "?user=" .. who .. (n % 64))
end
"#;

/// How `wrk` is run.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// How long.
    pub duration: Duration,
    /// Its threads.
    pub threads: u32,
    /// Open connections, each with one request at a time.
    pub connections: u32,
    /// A request without a response for this long is a timeout (a socket error).
    pub timeout: Duration,
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "wrk -t{} -c{} -d{}s --timeout {}s --latency",
            self.threads,
            self.connections,
            self.duration.as_secs(),
            self.timeout.as_secs()
        )
    }
}

/// What one `wrk` run measured.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    /// Requests completed.
    pub requests: u64,
    /// Responses other than 2xx or 3xx.
    pub non_2xx: u64,
    /// Connect, read, write and timeout errors.
    pub socket_errors: u64,
    /// Latency percentiles and maximum.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Maximum.
    pub max: Duration,
    /// Requests per second, as wrk computed it.
    pub rps: f64,
    /// How long it ran, as wrk says.
    pub seconds: f64,
}

impl Figures {
    /// Requests that failed: non-2xx/3xx responses and socket errors.
    pub fn failed(&self) -> u64 {
        self.non_2xx + self.socket_errors
    }
}

/// Runs `wrk` against `address` with `load`; `script_dir` receives its request script.
/// Waits at most the run's length plus 60 s, then kills it.
pub fn run(address: SocketAddr, load: Load, script_dir: &Path) -> Result<(Figures, String), Error> {
    let script = script_dir.join("requests.lua");
    std::fs::write(&script, SCRIPT)?;
    let mut child = Command::new("wrk")
        .arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.duration.as_secs()))
        .arg("--timeout")
        .arg(format!("{}s", load.timeout.as_secs()))
        .arg("--latency")
        .arg("-s")
        .arg(&script)
        .arg(format!("http://{address}/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| format!("could not run wrk (on Debian: apt-get install wrk): {err}"))?;
    let mut stdout = child.stdout.take().ok_or("wrk's stdout")?;
    let mut stderr = child.stderr.take().ok_or("wrk's stderr")?;
    let (sent, received) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let mut err = String::new();
        let read = stdout
            .read_to_string(&mut out)
            .and_then(|_| stderr.read_to_string(&mut err));
        let _ = sent.send(());
        read.map(|_| (out, err))
    });
    let deadline = load.duration + Duration::from_secs(60);
    if received.recv_timeout(deadline).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("wrk did not finish within {deadline:?}").into());
    }
    let status = child.wait()?;
    let (out, err) = reader
        .join()
        .map_err(|_| "the thread reading wrk's output panicked")??;
    if !status.success() {
        return Err(format!("wrk failed ({status}): {err}{out}").into());
    }
    Ok((parse(&out)?, out))
}

/// Reads wrk's report (the format of wrk 4 with `--latency`).
pub fn parse(report: &str) -> Result<Figures, Error> {
    let mut figures = Figures::default();
    let (mut p50, mut p99, mut max, mut requests, mut rps) = (None, None, None, None, None);
    for line in report.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            // Thread Stats: Latency <avg> <stdev> <max> <+/- stdev>
            ["Latency", _avg, _stdev, most, _] => max = Some(duration(most)?),
            ["50%", value] => p50 = Some(duration(value)?),
            ["99%", value] => p99 = Some(duration(value)?),
            [count, "requests", "in", took, ..] => {
                requests = Some(count.parse()?);
                figures.seconds = duration(took.trim_end_matches(','))?.as_secs_f64();
            }
            ["Requests/sec:", value] => rps = Some(value.parse()?),
            ["Non-2xx", "or", "3xx", "responses:", count] => figures.non_2xx = count.parse()?,
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                figures.socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    let missing = |what: &str| format!("wrk's report has no {what}:\n{report}");
    figures.p50 = p50.ok_or_else(|| missing("50% latency"))?;
    figures.p99 = p99.ok_or_else(|| missing("99% latency"))?;
    figures.max = max.ok_or_else(|| missing("maximum latency"))?;
    figures.requests = requests.ok_or_else(|| missing("request count"))?;
    figures.rps = rps.ok_or_else(|| missing("requests per second"))?;
    Ok(figures)
}

/// wrk's `12.34us`, `1.20ms`, `2.00s`, `1.00m`, `1.00h`.
fn duration(text: &str) -> Result<Duration, Error> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .ok_or_else(|| format!("`{text}`: no unit"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse()?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(format!("`{text}`: unknown unit").into()),
    };
    // Rounded to the nanosecond: `420.00us` is 420 µs, not 419.999….
    Ok(Duration::from_nanos((seconds * 1e9).round() as u64))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn reads_wrk_4_report() {
        let report = "Running 8s test @ http://127.0.0.1:41235/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   635.91us    0.89ms  12.92ms   93.69%
    Req/Sec     9.36k   642.38    10.43k    71.00%
  Latency Distribution
     50%  420.00us
     75%  570.00us
     90%    1.00ms
     99%    4.43ms
  558672 requests in 8.00s, 86.17MB read
  Socket errors: connect 0, read 2, write 0, timeout 5
  Non-2xx or 3xx responses: 41
Requests/sec:  69834.00
Transfer/sec:      2.87MB
";
        let figures = super::parse(report).unwrap();
        assert_eq!(figures.requests, 558_672);
        assert_eq!((figures.non_2xx, figures.socket_errors), (41, 7));
        assert_eq!(figures.failed(), 48);
        assert_eq!(figures.p50, Duration::from_micros(420));
        assert_eq!(figures.p99, Duration::from_micros(4_430));
        assert_eq!(figures.max, Duration::from_micros(12_920));
        assert!((figures.rps - 69_834.0).abs() < 1e-6);
        assert!((figures.seconds - 8.0).abs() < 1e-9);
    }

    #[test]
    fn a_report_without_latencies_is_an_error() {
        assert!(super::parse("  100 requests in 1.00s, 1.00MB read\n").is_err());
    }
}
