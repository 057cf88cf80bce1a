//! `sava-admin storage`: segments of reliable topics, on local disk and in
//! the object store.

use std::path::Path;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sava_proto::sava::v1 as pb;
use tonic::codegen::tokio_stream::StreamExt;

use super::show;
use crate::api::{Api, Reply};
use crate::cli::{OutputFormat, StorageCommand};
use crate::output::{Column, Table, format_bytes, yes_no};
use crate::time::format_time;
use crate::views::{CompactedView, ExportedView, OffloadedView, SegmentView, SegmentsView};

pub(super) async fn run(api: &Api, output: OutputFormat, command: StorageCommand) -> Result<()> {
    match command {
        StorageCommand::Segments { topic } => {
            let listed = segments(api, &topic).await?;
            show(output, &listed, print_segments)
        }
        StorageCommand::Offload { topic } => {
            let request = pb::OffloadTopicRequest { topic };
            let reply = api.admin().offload_topic(request).await.reply(api)?;
            let view = OffloadedView {
                topics: reply.topics,
                segments_offloaded: reply.segments_offloaded,
            };
            show(output, &view, |view| {
                println!(
                    "offloaded {} segments of {}",
                    view.segments_offloaded,
                    view.topics.join(", ")
                );
            })
        }
        StorageCommand::Compact { topic } => {
            let request = pb::CompactTopicRequest { topic };
            let reply = api.admin().compact_topic(request).await.reply(api)?;
            let view = CompactedView {
                topics: reply.topics,
                merged: reply.merged,
                swept: reply.swept,
            };
            show(output, &view, |view| {
                println!(
                    "wrote {} merged objects and deleted {} orphan or replaced objects",
                    view.merged, view.swept
                );
            })
        }
        StorageCommand::Export { topic, to } => {
            let exported = export(api, &topic, &to).await?;
            show(output, &exported, |view| {
                println!(
                    "exported {} Parquet files ({}) to {}",
                    view.files.len(),
                    format_bytes(view.bytes),
                    view.directory
                );
            })
        }
    }
}

async fn segments(api: &Api, topic: &str) -> Result<SegmentsView> {
    let request = pb::ListSegmentsRequest {
        topic: topic.to_owned(),
    };
    let reply = api.admin().list_segments(request).await.reply(api)?;
    Ok(SegmentsView {
        object_store: Some(reply.object_store).filter(|s| !s.is_empty()),
        segments: reply.segments.into_iter().map(Into::into).collect(),
    })
}

fn print_segments(view: &SegmentsView) {
    let mut table = Table::new(&[
        ("TOPIC", Column::Text),
        ("WHERE", Column::Word),
        ("OFFSETS", Column::Number),
        ("FIRST PUBLISHED", Column::Number),
        ("BYTES", Column::Number),
        ("SEALED", Column::Word),
        ("OFFLOADED", Column::Word),
        ("OBJECT", Column::Text),
    ]);
    for segment in &view.segments {
        table.row(vec![
            segment.topic.clone(),
            segment.location.clone(),
            format!("{}..{}", segment.base_offset, segment.next_offset),
            format_time(segment.first_publish_time_ms),
            format_bytes(segment.bytes),
            yes_no(segment.sealed),
            yes_no(segment.offloaded),
            segment.object_key.clone().unwrap_or_default(),
        ]);
    }
    table.print();
    match &view.object_store {
        Some(url) => println!("object store: {url}"),
        None => println!("offload is off on this broker"),
    }
}

/// Downloads every offloaded object of `topic` into `dir`, keeping the
/// `partition=<n>/<offsets>.parquet` end of its key.
async fn export(api: &Api, topic: &str, dir: &Path) -> Result<ExportedView> {
    let objects: Vec<SegmentView> = segments(api, topic)
        .await?
        .segments
        .into_iter()
        .filter(|s| s.location == "object")
        .collect();
    let total: u64 = objects.iter().map(|s| s.bytes).sum();
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}")
            .expect("a valid template"),
    );

    let mut files = Vec::new();
    for segment in &objects {
        let key = segment.object_key.clone().unwrap_or_default();
        let relative = export_path(&key);
        let path = dir.join(&relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create directory {}", parent.display()))?;
        }
        bar.set_message(relative.clone());

        let request = pb::ReadSegmentRequest {
            topic: segment.topic.clone(),
            base_offset: segment.base_offset,
        };
        let mut stream = api.admin().read_segment(request).await.reply(api)?;
        let mut bytes = Vec::with_capacity(segment.bytes as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|status| api.error(status))?;
            bar.inc(chunk.data.len() as u64);
            bytes.extend_from_slice(&chunk.data);
        }
        if bytes.len() as u64 != segment.bytes {
            anyhow::bail!(
                "object {key} came back with {} of its {} bytes",
                bytes.len(),
                segment.bytes
            );
        }
        std::fs::write(&path, &bytes)
            .with_context(|| format!("cannot write {}", path.display()))?;
        files.push(relative);
    }
    bar.finish_and_clear();
    Ok(ExportedView {
        topic: topic.to_owned(),
        directory: dir.display().to_string(),
        files,
        bytes: total,
    })
}

/// `partition=<n>/<base>-<next>.parquet`, the end of an object key.
fn export_path(key: &str) -> String {
    let mut parts = key.rsplit('/');
    let file = parts.next().unwrap_or(key);
    match parts.next() {
        Some(partition) if partition.starts_with("partition=") => format!("{partition}/{file}"),
        _ => file.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_files_keep_the_partition_and_offsets_of_their_key() {
        assert_eq!(
            export_path("p/sava/default/t/partition=3/0001-0009.parquet"),
            "partition=3/0001-0009.parquet"
        );
        assert_eq!(export_path("odd.parquet"), "odd.parquet");
    }
}
