//! Logging of `vswitch run`: levelled, timestamped lines on stderr through
//! [`tracing`], e.g.
//! `2026-12-03T10:40:00.123456Z  WARN switch::worker: port v-red (red) is gone: ...`.
//!
//! Contract: [`filter`] chooses the filter from `--log-level` (a level or
//! `RUST_LOG`-style directives such as `info,switch::worker=debug`), else
//! `-v` (once: debug, twice: trace), else the `RUST_LOG` variable, else
//! `info`. Events come from the `switch` library (targets `switch::MODULE`)
//! and from the binary (`vswitch`). Nothing is logged per packet: the
//! forwarding path only reports rate-limited summaries.

use std::str::FromStr;
use tracing_subscriber::filter::{LevelFilter, Targets};

/// The filter for `--log-level` (`level`), `-v` count (`verbose`) and the
/// value of `RUST_LOG` (`env`), in that order of precedence. An invalid
/// `--log-level` is an error; an invalid `RUST_LOG` falls back to `info`
/// with a note in the second element.
pub fn filter(
    level: Option<&str>,
    verbose: u8,
    env: Option<&str>,
) -> Result<(Targets, Option<String>), String> {
    if let Some(l) = level {
        return parse(l)
            .map(|t| (t, None))
            .map_err(|e| format!("bad --log-level {l:?}: {e}"));
    }
    match verbose {
        0 => {}
        1 => return Ok((Targets::new().with_default(LevelFilter::DEBUG), None)),
        _ => return Ok((Targets::new().with_default(LevelFilter::TRACE), None)),
    }
    let info = Targets::new().with_default(LevelFilter::INFO);
    match env.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok((info, None)),
        Some(e) => match parse(e) {
            Ok(t) => Ok((t, None)),
            Err(err) => Ok((info, Some(format!("RUST_LOG={e:?} ignored: {err}")))),
        },
    }
}

/// Parse `error|warn|info|debug|trace|off` or comma-separated
/// `TARGET=LEVEL` / `LEVEL` directives. A bare word that is not a level is
/// refused (`Targets` would read it as "everything from target WORD").
pub fn parse(s: &str) -> Result<Targets, String> {
    for d in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = d.rsplit_once('=').map_or(d, |(_, l)| l);
        LevelFilter::from_str(level).map_err(|_| {
            format!("{level:?} is not a level (error, warn, info, debug, trace or off)")
        })?;
    }
    Targets::from_str(s).map_err(|e| e.to_string())
}

/// Install the stderr logger of `vswitch run` (see the module docs for the
/// precedence). Returns an error message for a bad `--log-level`.
pub fn init(level: Option<&str>, verbose: u8) -> Result<(), String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let env = std::env::var("RUST_LOG").ok();
    let (targets, note) = filter(level, verbose, env.as_deref())?;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(true);
    tracing_subscriber::registry()
        .with(fmt)
        .with(targets)
        .try_init()
        .map_err(|e| e.to_string())?;
    if let Some(n) = note {
        tracing::warn!("{n}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    fn enabled(t: &Targets, target: &str, l: Level) -> bool {
        t.would_enable(target, &l)
    }

    #[test]
    fn precedence_level_then_v_then_env() {
        let (t, _) = filter(Some("warn"), 2, Some("trace")).unwrap();
        assert!(enabled(&t, "switch::worker", Level::WARN));
        assert!(!enabled(&t, "switch::worker", Level::INFO));
        let (t, _) = filter(None, 1, Some("error")).unwrap();
        assert!(enabled(&t, "switch::worker", Level::DEBUG));
        assert!(!enabled(&t, "switch::worker", Level::TRACE));
        let (t, _) = filter(None, 2, None).unwrap();
        assert!(enabled(&t, "vswitch", Level::TRACE));
        let (t, _) = filter(None, 0, Some("error")).unwrap();
        assert!(!enabled(&t, "switch::daemon", Level::WARN));
        let (t, _) = filter(None, 0, None).unwrap();
        assert!(enabled(&t, "switch::daemon", Level::INFO));
        assert!(!enabled(&t, "switch::daemon", Level::DEBUG));
    }

    #[test]
    fn directives_per_target() {
        let (t, _) = filter(Some("warn,switch::worker=debug"), 0, None).unwrap();
        assert!(enabled(&t, "switch::worker", Level::DEBUG));
        assert!(!enabled(&t, "switch::daemon", Level::INFO));
        assert!(enabled(&t, "switch::daemon", Level::WARN));
    }

    #[test]
    fn bad_input_is_refused_or_ignored() {
        assert!(filter(Some("verbose"), 0, None).is_err());
        assert!(filter(Some("switch=loud"), 0, None).is_err());
        let (t, note) = filter(None, 0, Some("chatty")).unwrap();
        assert!(note.unwrap().contains("chatty"));
        assert!(enabled(&t, "switch::daemon", Level::INFO));
    }
}
