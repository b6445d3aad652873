//! `hotline`: parse the command line, then hand over to the library.

use hotline::config::Cli;

#[tokio::main]
async fn main() {
    let command = Cli::parse_or_exit();
    if let Err(e) = hotline::cli::run(command).await {
        eprintln!("hotline: {e:#}");
        std::process::exit(1);
    }
}
