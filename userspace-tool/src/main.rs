//! `wbrepl`: command-line tool for wbrepl stacks (a `wbcache` dm device over a `repl` dm device
//! over a local disk).
//!
//! Device-mapper is read through its ioctls (the `devicemapper` crate), never by running
//! `dmsetup`. Exit status: 0 success, 1 operational error (including a DEVICE that names no
//! wbrepl device), 2 usage error.

#![forbid(unsafe_code)]

mod dm;
mod stack;
mod text;

use clap::{Args, Parser, Subcommand};
use std::io::{self, Write};
use std::process::ExitCode;

/// Manage and inspect wbrepl stacks (dm-wbcache over dm-repl).
#[derive(Debug, Parser)]
#[command(name = "wbrepl", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show every wbrepl stack: which wbcache device sits on which repl device, and their state.
    #[command(long_about = STATUS_ABOUT)]
    Status(StatusArgs),
}

const STATUS_ABOUT: &str = "\
Show every wbrepl stack: which wbcache device sits on which repl device, and their state.

Reads all device-mapper devices; a device with a wbcache target whose origin is a device with a \
repl target forms a stack with it. A repl device with no wbcache above it is a stack of its own; \
a wbcache whose origin is not a repl device is shown with a note. Devices of other targets are \
ignored. Devices whose wbcache/repl table cannot be read or parsed are listed as errors (this \
does not change the exit status).

With DEVICE arguments (a name, /dev/mapper/NAME or MAJOR:MINOR) only the stacks containing one \
of them are shown. A DEVICE that names no wbcache or repl device is reported on stderr and makes \
the exit status 1; the report on stdout (with --json an empty \"stacks\" list, if nothing \
matched) is still printed.

Exit status: 0 ok, 1 operational error (e.g. device-mapper not available, not root, unknown \
DEVICE), 2 usage error.";

#[derive(Debug, Args)]
struct StatusArgs {
    /// Print a JSON document ({"stacks":[...],"errors":[...]}) instead of text.
    #[arg(long)]
    json: bool,
    /// Only show the stacks containing these devices.
    #[arg(value_name = "DEVICE")]
    devices: Vec<String>,
}

/// Writes `s` to stdout; a closed pipe or full disk is an error, not a panic.
fn emit(s: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(s.as_bytes())?;
    out.flush()
}

fn status(args: &StatusArgs) -> Result<ExitCode, String> {
    let devices = dm::snapshot().map_err(|e| e.to_string())?;
    let mut report = stack::identify(&devices);
    let unmatched = report.filter(&args.devices);
    let rendered = if args.json {
        let mut s = serde_json::to_string_pretty(&report)
            .map_err(|e| format!("cannot encode JSON: {e}"))?;
        s.push('\n');
        s
    } else {
        text::render(&report)
    };
    emit(&rendered).map_err(|e| format!("cannot write output: {e}"))?;
    for q in &unmatched {
        eprintln!("wbrepl: {q}: no wbcache or repl device by that name");
    }
    Ok(if unmatched.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Status(args) => status(args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("wbrepl: {e}");
        ExitCode::FAILURE
    })
}
