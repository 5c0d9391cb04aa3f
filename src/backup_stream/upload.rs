//! The `uploader-N` pool: each job streams one local binlog through the pipeline (read →
//! compress → encrypt) into its object, with MyHoard's metadata, and reports the outcome.
//!
//! Jobs come from the controller on a bounded channel; outcomes go back on an unbounded one.
//! The object key is fixed by the job (`remote_index` and server id), so uploading the same
//! binlog again after a crash replaces the object instead of adding a second one.

use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::layout::{self, BinlogInfo};
use crate::pipeline::{self, Encoding, compress::CompressionSettings, encrypt::PublicKey};
use crate::storage::ObjectStorage;

/// One binlog to store.
pub struct UploadJob {
    pub stream_id: String,
    pub storage: Arc<dyn ObjectStorage>,
    pub compression: CompressionSettings,
    pub public_key: PublicKey,
    /// The scanner's record, with `remote_index`, `remote_key` and `compression_algorithm` set.
    pub info: BinlogInfo,
}

#[derive(Debug)]
pub struct UploadOutcome {
    pub stream_id: String,
    pub info: BinlogInfo,
    pub result: Result<UploadStats, String>,
}

#[derive(Debug, Clone, Copy)]
pub struct UploadStats {
    pub stored_bytes: u64,
    pub seconds: f64,
}

/// Uploads one binlog.
pub fn upload_binlog(job: &UploadJob) -> anyhow::Result<UploadStats> {
    let key = job
        .info
        .remote_key
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("upload job without a remote key"))?;
    let started = Instant::now();
    let file = File::open(&job.info.full_name)
        .map_err(|err| anyhow::anyhow!("opening {}: {err}", job.info.full_name))?;
    let mut source = BufReader::with_capacity(1 << 20, file);
    let metadata = layout::json_metadata(&job.info);
    let stats = pipeline::upload(
        job.storage.as_ref(),
        key,
        &mut source,
        &metadata,
        Encoding {
            compression: job.compression,
            key: Some(&job.public_key),
        },
    )?;
    Ok(UploadStats {
        stored_bytes: stats.stored_bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Starts `count` uploader threads; they stop when `jobs` is closed.
pub fn spawn_pool(
    count: usize,
    jobs: Receiver<UploadJob>,
    outcomes: Sender<UploadOutcome>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    (0..count.max(1))
        .map(|n| {
            let jobs = jobs.clone();
            let outcomes = outcomes.clone();
            std::thread::Builder::new()
                .name(format!("uploader-{n}"))
                .spawn(move || {
                    for job in jobs {
                        let result = upload_binlog(&job).map_err(|err| format!("{err:#}"));
                        let outcome = UploadOutcome {
                            stream_id: job.stream_id,
                            info: job.info,
                            result,
                        };
                        if outcomes.send(outcome).is_err() {
                            return;
                        }
                    }
                })
        })
        .collect()
}
