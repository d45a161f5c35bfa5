//! `genfleet validate`: what a worker would decide about a job file or an
//! uploaded image, without running anything.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use genfleet_proto::ContentType;

#[derive(Args)]
pub(crate) struct ValidateArgs {
    file: PathBuf,
}

pub(crate) fn run(args: &ValidateArgs) -> Result<ExitCode> {
    let file = args.file.as_path();
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let looks_like_json = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if looks_like_json {
        return match genfleet_proto::decode_job(&bytes, &ContentType::Json)
            .and_then(|job| genfleet_proto::validate_job(job, None))
        {
            Ok(job) => {
                println!(
                    "valid job {} ({}), queue {}",
                    job.job_id(),
                    job.kind().label(),
                    genfleet_worker::default_class_of(job.job())
                        .lane_queue(genfleet_worker::lane_of(job.job().priority))
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                println!("invalid_input: {e}");
                Ok(ExitCode::FAILURE)
            }
        };
    }
    match genfleet_worker::pipeline::prepare(&bytes, &genfleet_imaging::Limits::default(), &[]) {
        Ok(prepared) => {
            println!(
                "accepted {} image, {}x{} stored, {}x{} upright",
                prepared.source.format.name(),
                prepared.source.width,
                prepared.source.height,
                prepared.image.width(),
                prepared.image.height()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            println!("{}: {}", failure.code, failure.message);
            Ok(ExitCode::FAILURE)
        }
    }
}
