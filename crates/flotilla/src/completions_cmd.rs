//! `flotilla completions SHELL`: shell completion scripts, generated from the command definitions.

use std::io::Write;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

/// Arguments of `flotilla completions`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Load them in the current shell, e.g.:\n  \
    bash: source <(flotilla completions bash)\n  \
    zsh:  flotilla completions zsh > \"${fpath[1]}/_flotilla\"\n  \
    fish: flotilla completions fish > ~/.config/fish/completions/flotilla.fish")]
pub struct CompletionsArgs {
    /// The shell to complete in
    #[arg(value_enum)]
    shell: Shell,
}

/// Prints the completion script for `args.shell` on stdout.
pub fn run(args: CompletionsArgs) -> Result<()> {
    let mut cmd = crate::Cli::command();
    // Into memory first: `generate` panics on a write error, and a reader that stops early
    // (`| head`) is no error of ours.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "flotilla", &mut script);
    match std::io::stdout().lock().write_all(&script) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the completion script to stdout"),
    }
}
