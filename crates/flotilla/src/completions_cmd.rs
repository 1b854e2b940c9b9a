//! `flotilla completions SHELL`: shell completion scripts, generated from the command definitions.

use anyhow::Result;
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
    clap_complete::generate(args.shell, &mut cmd, "flotilla", &mut std::io::stdout().lock());
    Ok(())
}
