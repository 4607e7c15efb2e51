//! Canaries: a new build serves a share of the requests beside the serving build, and a
//! policy promotes it when its figures hold up or aborts it when they do not.
//!
//! The load run starts two: a good build, which the policy must promote, and a build that
//! fails one price in five, which the policy must abort before it spends more than its error
//! budget. It waits for each decision on the reloader's events, with a deadline. The admin
//! routes start, show, promote and abort a canary by hand.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hotreload::harness::VariantBuilder;
use hotreload::{CanaryFigures, CanaryOptions, CanaryPolicy, Event, HotReloader};
use serde::Deserialize;

use crate::load_run::{LIB, price_rule};
use crate::server::{App, MODULE, call_failed};

/// Listed by the service when it starts.
pub const ROUTES_HELP: &str = "POST /admin/canary?share=0.2[&by=keys][&manual=true] (body: a library's path)  \
     GET /admin/canary  POST /admin/canary/promote  POST /admin/canary/abort";

/// The share of the calls a canary takes.
pub const SHARE: f64 = 0.2;

/// Failed canary calls after which the policy stops the canary at once.
pub const ERROR_BUDGET: u64 = 50;

/// What a canary should come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Promoted by the policy.
    Promoted,
    /// Aborted by the policy.
    Aborted,
}

/// A canary of the load run: which build, what it does, and what came of it.
#[derive(Debug, Clone)]
pub struct CanaryRun {
    /// The variant.
    pub build: &'static str,
    /// What it does, in a few words.
    pub what: &'static str,
    /// What the policy should decide.
    pub expect: Expect,
    /// What happened.
    pub outcome: Outcome,
}

/// What came of a canary.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Not run yet.
    Pending,
    /// `start_canary` refused it.
    NotStarted(String),
    /// Promoted, `after` it started.
    Promoted {
        after: Duration,
        reason: String,
        figures: CanaryFigures,
    },
    /// Aborted, `after` it started.
    Aborted {
        after: Duration,
        reason: String,
        figures: CanaryFigures,
    },
    /// No decision by the deadline; the figures then (the load run aborts it).
    Undecided { status: String },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Pending => write!(f, "not run"),
            Outcome::NotStarted(err) => write!(f, "not started: {err}"),
            Outcome::Promoted {
                after,
                reason,
                figures,
            } => write!(
                f,
                "promoted {after:.2?} after it was offered ({reason}); {figures}"
            ),
            Outcome::Aborted {
                after,
                reason,
                figures,
            } => write!(
                f,
                "aborted {after:.2?} after it was offered: {reason}; {figures}"
            ),
            Outcome::Undecided { status } => write!(f, "no decision by the deadline: {status}"),
        }
    }
}

/// The good canary: a new price rule, no errors.
pub fn good() -> CanaryRun {
    CanaryRun {
        build: "members_12",
        what: "members save 12%",
        expect: Expect::Promoted,
        outcome: Outcome::Pending,
    }
}

/// The failing canary: the same rule, and one price request in five fails.
pub fn failing() -> CanaryRun {
    CanaryRun {
        build: "members_12_failing",
        what: "members save 12%, one price in five fails",
        expect: Expect::Aborted,
        outcome: Outcome::Pending,
    }
}

/// Adds the canaries' builds to the load run's variants.
pub fn variants(builder: VariantBuilder) -> VariantBuilder {
    builder
        .variant(good().build, price_rule("12"))
        .variant(failing().build, |v| {
            price_rule("12")(v).edit(
                LIB,
                "let served = self.served.fetch_add(1, Ordering::Relaxed) + 1;",
                "let served = self.served.fetch_add(1, Ordering::Relaxed) + 1;\n        \
                 if served % 5 == 0 {\n            \
                 return Err(format!(\"the price backend timed out (request {served})\"));\n        \
                 }",
            )
        })
}

/// What the load run's canaries should have come to; one line per one that did not.
pub fn check(runs: &[CanaryRun]) -> Vec<String> {
    let mut failures = Vec::new();
    for expected in [good(), failing()] {
        let Some(run) = runs.iter().find(|r| r.build == expected.build) else {
            failures.push(format!("the canary `{}` did not run", expected.build));
            continue;
        };
        let came = match run.outcome {
            Outcome::Promoted { .. } => Some(Expect::Promoted),
            Outcome::Aborted { .. } => Some(Expect::Aborted),
            _ => None,
        };
        if came != Some(run.expect) {
            failures.push(format!(
                "the canary `{}` should have been {}: {}",
                run.build,
                match run.expect {
                    Expect::Promoted => "promoted",
                    Expect::Aborted => "aborted",
                },
                run.outcome
            ));
        }
    }
    failures
}

/// The failed calls (errors and panics) the failing canary's figures counted, once aborted.
pub fn failed_calls(runs: &[CanaryRun]) -> Option<u64> {
    runs.iter()
        .filter(|r| r.expect == Expect::Aborted)
        .find_map(|r| match &r.outcome {
            Outcome::Aborted { figures, .. } => Some(figures.canary.errors + figures.canary.panics),
            _ => None,
        })
}

/// Requests that may fail in the run with reloads: the failing canary's error budget.
pub fn failed_requests_allowed() -> u64 {
    ERROR_BUDGET
}

/// The policy both canaries of the load run are judged by.
pub fn policy() -> CanaryPolicy {
    CanaryPolicy::default()
        .min_calls(2_000)
        .min_duration(Duration::from_secs(2))
        .max_error_rate_increase(0.01)
        .max_p99_ratio(3.0)
        .error_budget(ERROR_BUDGET)
}

/// Starts `run`'s canary from `path` beside the serving build, on [`SHARE`] of the calls
/// under [`policy`], and waits until `deadline` for the policy's decision, told by the
/// reloader's events. Without one by then, the canary is aborted.
pub fn run(
    reloader: &HotReloader,
    mut run: CanaryRun,
    path: &Path,
    deadline: Instant,
) -> CanaryRun {
    // Subscribed before the start, so that no decision can come before the listening.
    let events = reloader.subscribe();
    let started = Instant::now();
    let options = CanaryOptions::new(path)
        .share_of_calls(SHARE)
        .policy(policy());
    let canary = match reloader.start_canary(MODULE, options) {
        Ok(canary) => canary.generation,
        Err(err) => {
            run.outcome = Outcome::NotStarted(err.to_string());
            return run;
        }
    };
    run.outcome = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::CanaryPromoted {
                module,
                canary: version,
                reason,
                figures,
            }) if module == MODULE && version.generation == canary => {
                break Outcome::Promoted {
                    after: started.elapsed(),
                    reason,
                    figures,
                };
            }
            Ok(Event::CanaryAborted {
                module,
                canary: version,
                reason,
                figures,
            }) if module == MODULE && version.generation == canary => {
                break Outcome::Aborted {
                    after: started.elapsed(),
                    reason,
                    figures,
                };
            }
            Ok(_) => {}
            // The deadline passed (or the reloader is gone): no decision.
            Err(_) => {
                let status = match reloader.canary(MODULE) {
                    Ok(Some(status)) => status.to_string(),
                    Ok(None) => "no canary runs".to_owned(),
                    Err(err) => err.to_string(),
                };
                if let Err(err) = reloader.abort_canary(MODULE) {
                    eprintln!("aborting the undecided canary: {err}");
                }
                break Outcome::Undecided { status };
            }
        }
    };
    run
}

/// `/admin/canary`: start (POST), show (GET); `/admin/canary/promote`, `/abort` (POST).
pub fn routes() -> Router<App> {
    Router::new()
        .route("/admin/canary", post(start).get(show))
        .route("/admin/canary/promote", post(promote))
        .route("/admin/canary/abort", post(abort))
}

#[derive(Deserialize)]
struct StartQuery {
    share: Option<f64>,
    /// `keys`: a share of the users (each always sees the same version); else of the calls.
    by: Option<String>,
    manual: Option<bool>,
}

/// `POST /admin/canary?share=0.2[&by=keys][&manual=true]` with a library's path as the body.
async fn start(State(app): State<App>, Query(query): Query<StartQuery>, path: String) -> Response {
    let path = std::path::PathBuf::from(path.trim());
    let share = query.share.unwrap_or(SHARE);
    if !(0.0..=1.0).contains(&share) {
        return (StatusCode::BAD_REQUEST, "share is between 0 and 1\n").into_response();
    }
    let options = CanaryOptions::new(&path);
    let options = match query.by.as_deref() {
        Some("keys") => options.share_of_keys(share),
        None | Some("calls") => options.share_of_calls(share),
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("by is `calls` or `keys`, not `{other}`\n"),
            )
                .into_response();
        }
    };
    let options = if query.manual == Some(true) {
        options.manual()
    } else {
        options.policy(policy())
    };
    let reloader = app.reloader.clone();
    let started = tokio::task::spawn_blocking(move || reloader.start_canary(MODULE, options)).await;
    match started {
        Ok(Ok(canary)) => format!("canary load #{} started\n", canary.generation).into_response(),
        Ok(Err(err)) => (StatusCode::CONFLICT, format!("refused: {err}\n")).into_response(),
        Err(join) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{join}\n")).into_response(),
    }
}

/// `GET /admin/canary`: the canary's figures so far.
async fn show(State(app): State<App>) -> Response {
    match app.reloader.canary(MODULE) {
        Ok(Some(status)) => format!("{status}\n").into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no canary runs\n").into_response(),
        Err(err) => call_failed(err),
    }
}

/// `POST /admin/canary/promote`: the canary serves every call.
async fn promote(State(app): State<App>) -> Response {
    let reloader = app.reloader.clone();
    match tokio::task::spawn_blocking(move || reloader.promote_canary(MODULE)).await {
        Ok(Ok(report)) => format!("promoted {report}\n").into_response(),
        Ok(Err(err)) => (StatusCode::CONFLICT, format!("{err}\n")).into_response(),
        Err(join) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{join}\n")).into_response(),
    }
}

/// `POST /admin/canary/abort`: the serving build takes every call again.
async fn abort(State(app): State<App>) -> Response {
    let reloader = app.reloader.clone();
    match tokio::task::spawn_blocking(move || reloader.abort_canary(MODULE)).await {
        Ok(Ok(figures)) => format!("aborted; {figures}\n").into_response(),
        Ok(Err(err)) => (StatusCode::CONFLICT, format!("{err}\n")).into_response(),
        Err(join) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{join}\n")).into_response(),
    }
}
