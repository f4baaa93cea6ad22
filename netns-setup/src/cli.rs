//! The `netns-setup` command line (`up|down|show FILE`): the topology file
//! applied, removed or shown. The binary is built from the `switch` package
//! (`cargo install --path switch` installs both), and calls [`main`].
//!
//! Exit codes: 0 success, 1 operation failed, 2 bad topology or usage.

use crate::Topology;
use crate::{docgen, lock};
use clap::{Parser, Subcommand};
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
    /// Remove everything `up` created, reporting every failure. Refused while
    /// a `vswitch run` serves the topology, unless --force.
    Down {
        /// Topology file (TOML); the built-in seed topology if omitted.
        file: Option<PathBuf>,
        /// Remove it even while a switch serves it.
        #[arg(long)]
        force: bool,
    },
    /// Print the shell completion script (e.g. `netns-setup completions bash > /etc/bash_completion.d/netns-setup`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        #[arg(value_enum)]
        shell: docgen::Shell,
    },
    /// Print the man page, or with --dir write one page per subcommand there.
    Man {
        /// Directory for netns-setup.1, netns-setup-up.1, ... (e.g. /usr/local/share/man/man1).
        #[arg(long)]
        dir: Option<PathBuf>,
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

/// The clap definition of the `netns-setup` command line (for completions and man pages).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// `BIN man [--dir DIR]` for `cmd`: the page on stdout, or every page written to DIR.
pub fn man(cmd: clap::Command, dir: Option<&std::path::Path>, bin: &str) -> ExitCode {
    let res = match dir {
        None => docgen::man_page(cmd, &mut std::io::stdout()),
        Some(d) => docgen::man_dir(cmd, d).map(|files| {
            for f in files {
                println!("{}", f.display());
            }
        }),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{bin} man: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Run the `netns-setup` command line on the process arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.cmd {
        Cmd::Completions { shell } => {
            docgen::completions(command(), *shell, &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Cmd::Man { dir } => man(command(), dir.as_deref(), "netns-setup"),
        Cmd::Up { file } => {
            let t = match load(file) {
                Ok(t) => t,
                Err(c) => return c,
            };
            match crate::up(&t) {
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
        Cmd::Down { file, force } => {
            let t = match load(file) {
                Ok(t) => t,
                Err(c) => return c,
            };
            match lock::holder(&t.name) {
                Ok(Some(owner)) if !force => {
                    eprintln!(
                        "netns-setup down: topology {:?} is in use by {owner}; stop the switch first, or use --force",
                        t.name
                    );
                    return ExitCode::FAILURE;
                }
                Ok(Some(owner)) => {
                    eprintln!("netns-setup down: --force: removing it from under {owner}")
                }
                Ok(None) => {}
                Err(e) => {
                    eprintln!("netns-setup down: cannot check the topology lock: {e}");
                    if !force {
                        return ExitCode::FAILURE;
                    }
                }
            }
            let r = crate::down(&t);
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
            match crate::show(&t) {
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
