//! The fuzz driver:
//! `cargo run --profile fuzz -p fuzz -- TARGET --secs N [--seed S] [--execs N] [--out DIR] [--strict]`
//! or `-- TARGET --replay FILE`. Prints the exec count and rate; on the first
//! failing input writes it to `DIR/TARGET-SEED-EXEC.bin` and exits with 1.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

fn usage() -> ExitCode {
    let names: Vec<&str> = fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    eprintln!(
        "usage: fuzz TARGET [--secs N] [--execs N] [--seed S] [--out DIR] [--strict[=KNOWN_ISSUE_X,..]]\n       fuzz TARGET --replay FILE\ntargets: {}",
        names.join(", ")
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(name) = args.first() else {
        return usage();
    };
    let Some(target) = fuzz::target(name) else {
        return usage();
    };
    let (mut secs, mut execs, mut seed) = (10u64, u64::MAX, 1u64);
    let mut out = PathBuf::from("fuzz/crashes");
    let mut replay = None;
    let mut k = 1;
    while k < args.len() {
        let val = args.get(k + 1).cloned().unwrap_or_default();
        let num = || val.parse::<u64>().ok();
        match args[k].as_str() {
            "--secs" => match num() {
                Some(v) => secs = v,
                None => return usage(),
            },
            "--execs" => match num() {
                Some(v) => execs = v,
                None => return usage(),
            },
            "--seed" => match num() {
                Some(v) => seed = v,
                None => return usage(),
            },
            "--out" => out = PathBuf::from(&val),
            "--replay" => replay = Some(PathBuf::from(&val)),
            "--strict" => {
                fuzz::known::set_strict(true);
                k += 1;
                continue;
            }
            s if s.starts_with("--strict=") => {
                let names: Vec<&str> = s["--strict=".len()..].split(',').collect();
                fuzz::known::set_strict_only(&names);
                k += 1;
                continue;
            }
            _ => return usage(),
        }
        k += 2;
    }
    if let Some(f) = replay {
        let data = match std::fs::read(&f) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{}: {e}", f.display());
                return ExitCode::from(2);
            }
        };
        return match fuzz::run_one(target, &data) {
            Ok(()) => {
                println!("{name}: {} passes", f.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("{name}: {} fails: {}", f.display(), e.message);
                ExitCode::FAILURE
            }
        };
    }
    let budget = fuzz::Budget {
        time: Duration::from_secs(secs),
        execs,
        seed,
    };
    let r = fuzz::fuzz(target, &fuzz::seeds(name), budget);
    println!(
        "{name}: {} execs in {:.1} s, {:.0} exec/s (seed {seed})",
        r.execs,
        r.elapsed.as_secs_f64(),
        r.rate()
    );
    match r.failure {
        None => ExitCode::SUCCESS,
        Some(f) => {
            let _ = std::fs::create_dir_all(&out);
            let file = out.join(format!("{name}-{seed}-{}.bin", r.execs));
            match std::fs::write(&file, &f.input) {
                Ok(()) => println!(
                    "{name}: FAILED: {}\ninput written to {} (replay: cargo run --profile fuzz -p fuzz -- {name} --replay {})",
                    f.message,
                    file.display(),
                    file.display()
                ),
                Err(e) => println!(
                    "{name}: FAILED: {} (could not write the input: {e})",
                    f.message
                ),
            }
            ExitCode::FAILURE
        }
    }
}
