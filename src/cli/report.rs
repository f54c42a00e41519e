use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use cae::report::write_report;
use cae::run_folder::REPORT_FILE;

#[derive(Args)]
pub struct ReportArgs {
    /// Run folders (of `cae train`) and sweep folders (of `cae sweep`), shown in this order.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// The HTML file to write; default report.html inside the folder when there is one.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: ReportArgs) -> Result<()> {
    let out = match (&args.out, args.dirs.as_slice()) {
        (Some(out), _) => out.clone(),
        (None, [dir]) => dir.join(REPORT_FILE),
        (None, _) => bail!("name the report file with --out when reporting on several folders"),
    };
    write_report(&args.dirs, &out)?;
    say!("report: {}", out.display());
    Ok(())
}
