//! `netns-setup up|down|show FILE`: the topology file applied, removed or shown.
//!
//! Exit codes: 0 success, 1 operation failed, 2 bad topology or usage.

use clap::{Parser, Subcommand};
use netns_setup::Topology;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "netns-setup",
    version,
    about = "Create, remove or show the namespaces of a vswitch topology file"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create namespaces, links, addresses and routes (idempotent).
    Up {
        /// Topology file (TOML); the built-in seed topology if omitted.
        file: Option<PathBuf>,
    },
    /// Remove everything `up` created, reporting every failure.
    Down {
        /// Topology file (TOML); the built-in seed topology if omitted.
        file: Option<PathBuf>,
    },
    /// Show the state of the topology's namespaces and interfaces.
    Show {
        /// Topology file (TOML); the built-in seed topology if omitted.
        file: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn load(file: &Option<PathBuf>) -> Result<Topology, ExitCode> {
    match file {
        None => Ok(Topology::seed()),
        Some(p) => Topology::load(p).map_err(|e| {
            eprintln!("netns-setup: bad topology: {e}");
            ExitCode::from(2)
        }),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.cmd {
        Cmd::Up { file } => {
            let t = match load(file) {
                Ok(t) => t,
                Err(c) => return c,
            };
            match netns_setup::up(&t) {
                Ok(r) => {
                    if r.changes.is_empty() {
                        println!("topology {}: already up, nothing changed", t.name);
                    }
                    for c in r.changes {
                        println!("{c}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("netns-setup up: {e} (nothing created by this run was left behind)");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Down { file } => {
            let t = match load(file) {
                Ok(t) => t,
                Err(c) => return c,
            };
            let r = netns_setup::down(&t);
            for x in &r.removed {
                println!("removed {x}");
            }
            for x in &r.skipped {
                eprintln!("netns-setup down: left alone {x}");
            }
            for x in &r.failures {
                eprintln!("netns-setup down: {x}");
            }
            if r.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Cmd::Show { file, json } => {
            let t = match load(file) {
                Ok(t) => t,
                Err(c) => return c,
            };
            match netns_setup::show(&t) {
                Ok(r) => {
                    if *json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&r).expect("serializable")
                        );
                    } else {
                        print!("{}", r.table());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("netns-setup show: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
