//! `orgloop completions <bash|zsh|fish>`: the shell's completion script, on stdout.
//!
//! ```sh
//! orgloop completions bash > ~/.local/share/bash-completion/completions/orgloop
//! orgloop completions zsh > "${fpath[1]}/_orgloop"
//! orgloop completions fish > ~/.config/fish/completions/orgloop.fish
//! ```

use std::process::ExitCode;

use clap::{Args, CommandFactory, ValueEnum};
use clap_complete::Shell;

use super::Cli;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write completions for.
    pub shell: ShellName,
}

/// The shells completions are written for.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ShellName {
    Bash,
    Zsh,
    Fish,
}

pub fn run(args: CompletionsArgs) -> ExitCode {
    let shell = match args.shell {
        ShellName::Bash => Shell::Bash,
        ShellName::Zsh => Shell::Zsh,
        ShellName::Fish => Shell::Fish,
    };
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "orgloop",
        &mut std::io::stdout(),
    );
    ExitCode::SUCCESS
}
