//! Shell completions and man pages generated from a clap definition, for
//! `vswitch` and `netns-setup` (`completions SHELL`, `man [--dir DIR]`).
//!
//! Contract: the output is derived from the command definition alone; nothing
//! else is read or changed. [`man_dir`] writes one page per (visible)
//! command and subcommand, named `BIN.1` and `BIN-SUB.1`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub use clap_complete::Shell;

/// Write `cmd`'s completion script for `shell` to `out`.
pub fn completions(mut cmd: clap::Command, shell: Shell, out: &mut dyn Write) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, out);
}

/// Write `cmd`'s section-1 man page (the top command) to `out`.
pub fn man_page(cmd: clap::Command, out: &mut dyn Write) -> io::Result<()> {
    clap_mangen::Man::new(cmd).render(out)
}

/// Write the man pages of `cmd` and its subcommands into `dir` (created if
/// missing); returns the pages of `cmd` now in `dir`, sorted.
pub fn man_dir(cmd: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let name = cmd.get_name().to_string();
    clap_mangen::generate_to(cmd, dir)?;
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.ends_with(".1")
                    && (n == format!("{name}.1") || n.starts_with(&format!("{name}-")))
            })
        })
        .collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_setup_completions_and_man_pages() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            completions(crate::cli::command(), shell, &mut out);
            let s = String::from_utf8(out).unwrap();
            assert!(
                s.contains("netns-setup") && s.contains("--force"),
                "{shell}: {s}"
            );
        }
        let mut out = Vec::new();
        man_page(crate::cli::command(), &mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with(".ie") || s.contains(".TH"), "{s}");
        assert!(s.contains("netns\\-setup") && s.contains("down"), "{s}");
        let dir = std::env::temp_dir().join(format!("netns-setup-man-{}", std::process::id()));
        let files = man_dir(crate::cli::command(), &dir).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for n in ["netns-setup.1", "netns-setup-up.1", "netns-setup-down.1"] {
            assert!(names.iter().any(|x| x == n), "{n} not in {names:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
