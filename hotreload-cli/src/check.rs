//! `hotreload check`: build the base revision and the working tree (or take two libraries),
//! check each hot module, print the verdicts, exit with the worst.

use std::path::Path;
use std::process::ExitCode;

use hotreload::check::{Builds, Compare, Verdict, check_reload, modules_in};
use serde_json::json;

use crate::{CheckArgs, Format};

/// Why the check could not run.
type Failure = String;

pub(crate) fn run(args: CheckArgs) -> ExitCode {
    match compare(&args) {
        Ok(outcome) => {
            print(&args, &outcome);
            ExitCode::from(outcome.worst())
        }
        Err(failure) => {
            match args.format {
                Format::Text => eprintln!("hotreload check: {failure}"),
                Format::Json => println!("{}", json!({ "error": failure })),
            }
            ExitCode::from(3)
        }
    }
}

/// The builds compared and each module's verdict.
struct Outcome {
    builds: Builds,
    modules: Vec<(String, hotreload::check::Checked)>,
}

impl Outcome {
    /// The exit status: the worst verdict's.
    fn worst(&self) -> u8 {
        self.modules
            .iter()
            .map(|(_, checked)| match checked.verdict {
                Verdict::NeedsHostRestart { .. } => 2,
                Verdict::Refused { .. } => 1,
                _ => 0,
            })
            .max()
            .unwrap_or(0)
    }
}

fn compare(args: &CheckArgs) -> Result<Outcome, Failure> {
    let crate_dir = args
        .manifest_path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut compare = Compare::crate_at(crate_dir).release(args.release);
    if let Some(base) = &args.base {
        compare = compare.base_revision(base);
    }
    if let (Some(old), Some(new)) = (&args.old, &args.new) {
        compare = compare.base_artifact(old).new_artifact(new);
    }
    if let Some(dir) = &args.target_dir {
        compare = compare.target_dir(dir);
    }
    let builds = compare.build().map_err(|err| err.to_string())?;
    let modules = match &args.module {
        Some(module) => vec![module.clone()],
        None => {
            let found = modules_in(&builds.old).map_err(|err| err.to_string())?;
            if found.is_empty() {
                return Err(format!(
                    "{} exports no hot module (no `#[hot_module]` in the crate?)",
                    builds.old.display()
                ));
            }
            found
        }
    };
    let mut checked = Vec::new();
    for module in modules {
        let verdict = check_reload(&module, &builds.old, &builds.new)
            .map_err(|err| format!("`{module}` could not be checked: {err}"))?;
        checked.push((module, verdict));
    }
    Ok(Outcome {
        modules: checked,
        builds,
    })
}

fn print(args: &CheckArgs, outcome: &Outcome) {
    match args.format {
        Format::Text => {
            if let Some(base) = &outcome.builds.base {
                println!("compared with {base}");
            }
            for (module, checked) in &outcome.modules {
                println!("{module}: {}", checked.verdict);
                if let Some(report) = &checked.report {
                    if !report.changed_methods.is_empty() {
                        println!("  code changed: {}", report.changed_methods.join(", "));
                    }
                    if !report.unknown_methods.is_empty() {
                        println!(
                            "  methods added (a host built now can call them): {}",
                            report.unknown_methods.join(", ")
                        );
                    }
                }
            }
        }
        Format::Json => {
            let modules: Vec<_> = outcome
                .modules
                .iter()
                .map(|(module, checked)| {
                    let (kind, reason, from, to, steps) = match &checked.verdict {
                        Verdict::ReloadsCleanly => ("reloads_cleanly", None, None, None, None),
                        Verdict::ReloadsWithMigration { from, to, steps } => (
                            "reloads_with_migration",
                            None,
                            Some(*from),
                            Some(*to),
                            Some(steps.clone()),
                        ),
                        Verdict::Refused { reason } => {
                            ("refused", Some(reason.clone()), None, None, None)
                        }
                        Verdict::NeedsHostRestart { reason } => {
                            ("needs_host_restart", Some(reason.clone()), None, None, None)
                        }
                        _ => ("unknown", None, None, None, None),
                    };
                    let report = checked.report.as_ref();
                    json!({
                        "module": module,
                        "verdict": kind,
                        "summary": checked.verdict.to_string(),
                        "reason": reason,
                        "state_from": from,
                        "state_to": to,
                        "migrations": steps,
                        "changed_methods": report.map(|r| r.changed_methods.clone()),
                        "added_methods": report.map(|r| r.unknown_methods.clone()),
                    })
                })
                .collect();
            let document = json!({
                "base": outcome.builds.base,
                "old": outcome.builds.old,
                "new": outcome.builds.new,
                "modules": modules,
                "exit": outcome.worst(),
            });
            println!("{document:#}");
        }
    }
}
