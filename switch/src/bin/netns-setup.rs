//! `netns-setup`: the topology alone, without the switch (see [`netns_setup::cli`]).
//! Built from the `switch` package, so `cargo install --path switch` installs it
//! next to `vswitch`.

fn main() -> std::process::ExitCode {
    netns_setup::cli::main()
}
