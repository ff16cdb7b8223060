//! `wbrepl`: command-line tool for wbrepl stacks (a `wbcache` dm device over a `repl` dm device
//! over a local disk) and for the point-in-time images a secondary keeps of them.
//!
//! Device-mapper is used through its ioctls (the `devicemapper` crate), never by running
//! `dmsetup`. Exit status: 0 success, 1 operational error (including a DEVICE that names no
//! wbrepl device), 2 usage error. See docs/cli.md.

#![forbid(unsafe_code)]

mod checkpoint;
mod dm;
mod error;
mod images;
mod output;
mod secondary;
mod stack;
mod stackcmd;
mod state;
mod text;
mod thin;

use clap::{Args, Parser, Subcommand};
use error::{Error, Result};
use output::Outcome;
use std::io::{self, Write};
use std::process::ExitCode;

/// Manage and inspect wbrepl stacks (dm-wbcache over dm-repl), checkpoints and the secondary's
/// point-in-time images.
#[derive(Debug, Parser)]
#[command(name = "wbrepl", version, after_help = EXIT_HELP)]
struct Cli {
    /// Print a JSON document on stdout instead of text (secondary run: one JSON object per line).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

const EXIT_HELP: &str =
    "Exit status: 0 ok, 1 operational error (device-mapper, the kernel, a device), 2 usage error.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Show every wbrepl stack: which wbcache device sits on which repl device, and their state.
    #[command(long_about = STATUS_ABOUT)]
    Status(StatusArgs),
    /// Take a checkpoint: drain the cache and put a marker down the stack (prints the marker id).
    #[command(long_about = CHECKPOINT_ABOUT)]
    Checkpoint(checkpoint::CheckpointArgs),
    /// Create or remove a stack.
    #[command(subcommand)]
    Stack(StackCmd),
    /// The secondary side: turn markers into point-in-time images.
    #[command(subcommand)]
    Secondary(SecondaryCmd),
    /// List, expose, restore and delete the images of a secondary.
    #[command(subcommand)]
    Images(images::ImagesCmd),
}

#[derive(Debug, Subcommand)]
enum StackCmd {
    /// Create a stack (repl primary [+ wbcache], or repl secondary) from flags or a TOML file.
    Create(Box<stackcmd::CreateArgs>),
    /// Remove a stack, top to bottom.
    Remove(stackcmd::RemoveArgs),
}

#[derive(Debug, Subcommand)]
enum SecondaryCmd {
    /// Watch a secondary repl device (freeze_on_marker, over a dm-thin volume): at each marker
    /// take a thin snapshot, record it, thaw, apply the retention rules.
    #[command(long_about = RUN_ABOUT)]
    Run(secondary::RunArgs),
}

const STATUS_ABOUT: &str = "\
Show every wbrepl stack: which wbcache device sits on which repl device, and their state.

Reads all device-mapper devices; a device with a wbcache target whose origin is a device with a \
repl target forms a stack with it. A repl device with no wbcache above it is a stack of its own; \
a wbcache whose origin is not a repl device is shown with a note. Devices of other targets are \
ignored. Devices whose wbcache/repl table cannot be read or parsed are listed as errors (this \
does not change the exit status). Under each layer's raw status a summary line shows the cache's \
dirty blocks and checkpoint progress, or the replication state, lag and markers.

With DEVICE arguments (a name, /dev/mapper/NAME or MAJOR:MINOR) only the stacks containing one \
of them are shown. A DEVICE that names no wbcache or repl device is reported on stderr and makes \
the exit status 1; the report on stdout (with --json an empty \"stacks\" list, if nothing \
matched) is still printed.

Exit status: 0 ok, 1 operational error (e.g. device-mapper not available, not root, unknown \
DEVICE), 2 usage error.";

const CHECKPOINT_ABOUT: &str = "\
Take a checkpoint: the wbcache layer writes back every block of the epochs up to now while new \
writes are held in the cache (hold), written through (writethrough), or ordered behind them \
(ordered); then it writes a marker that the repl layer carries to the secondary, in order. \
Prints the marker id on stdout (a summary goes to stderr); with --json the whole result.

DEVICE is any layer of the stack. A stack without a cache gets a plain marker on its repl \
primary. A progress bar (blocks left to drain) is drawn on stderr when it is a terminal. \
Ctrl-C aborts the checkpoint. With --wait, wbrepl then waits (up to --timeout) until the repl \
primary reports that the secondary acknowledged the marker.

Exit status: 0 ok, 1 the checkpoint failed (busy, timed out, aborted, writeback or marker \
failed, not acknowledged in time), 2 usage error.";

const RUN_ABOUT: &str = "\
Watch a secondary repl device with freeze_on_marker whose data device is a dm-thin volume. \
Whenever it is frozen at a marker: suspend the thin volume, check it is still frozen at that \
marker, create a thin snapshot in the pool (create_snap), resume, record the image (marker id, \
label, time, thin id, size) in SECONDARY.json under --state-dir, thaw the secondary, and delete \
the images the retention rules (--keep, --max-age) no longer keep (never the newest). A failed \
snapshot still thaws. At start, a thin volume left suspended is resumed, half-made images are \
settled against the pool, and a secondary already frozen is handled. Waits for device-mapper \
events (and re-reads the status every 2 s). Stops on SIGINT/SIGTERM; --once handles what is \
pending and exits.

Output: one line per event (image, thawed, no_image, deleted, recovered, error), with --json \
one JSON object per line.";

#[derive(Debug, Args)]
struct StatusArgs {
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

fn status(args: &StatusArgs) -> Result<Outcome> {
    let dm = dm::Dm::open()?;
    let mut report = stack::identify(&dm.snapshot()?);
    let unmatched = report.filter(&args.devices);
    for q in &unmatched {
        eprintln!("wbrepl: {q}: no wbcache or repl device by that name");
    }
    let mut o = Outcome::new(&report, text::render(&report))?;
    if !unmatched.is_empty() {
        o.code = 1;
    }
    Ok(o)
}

fn run(cli: &Cli) -> Result<Outcome> {
    match &cli.command {
        Command::Status(a) => status(a),
        Command::Checkpoint(a) => checkpoint::run(a, cli.json),
        Command::Stack(StackCmd::Create(a)) => stackcmd::create(a),
        Command::Stack(StackCmd::Remove(a)) => stackcmd::remove(a),
        Command::Secondary(SecondaryCmd::Run(a)) => secondary::run(a, cli.json),
        Command::Images(c) => images::run(c),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let printed = run(&cli).and_then(|o| {
        let s = o.render(cli.json)?;
        emit(&s).map_err(|e| Error::op(format!("cannot write output: {e}")))?;
        Ok(o.code)
    });
    match printed {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("wbrepl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
