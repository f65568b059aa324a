//! `capmatch`: cross-domain image retrieval by caption matching.
//!
//! A thin binary: flags and output formatting live here; the work is done by
//! `capmatch-engine` (indexing, search, info over the gallery and the models) and
//! `capmatch-eval` (the benchmark protocol). Each subcommand has its own file in `commands/`.

#![forbid(unsafe_code)]

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "capmatch", version, about = "Cross-domain image retrieval by caption matching")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print L2-normalised CLIP embeddings of images or texts.
    Embed(EmbedArgs),
    /// Caption images with a BLIP / BLIP-2 captioner.
    Caption(CaptionArgs),
    /// Index folders of images: captions, caption embeddings and image embeddings.
    Index(IndexArgs),
    /// Search an index with an image or a text.
    Search(SearchArgs),
    /// Show what an index holds: counts per domain, models, skipped files, the approximate index.
    Info(InfoArgs),
    /// Build or tune the approximate (HNSW) index that searches use past a million images.
    #[command(subcommand)]
    Ann(AnnCommand),
    /// Run the cross-domain retrieval benchmark protocol on a dataset folder.
    Eval(EvalArgs),
    /// Report the similarity structure of an index: copies, cross-domain matches, clusters,
    /// outliers, and matches against a reference domain or folder.
    Inspect(InspectArgs),
    /// Serve the gallery over HTTP: a search page and a JSON API.
    Serve(ServeArgs),
    /// Copy a gallery's vectors into another store (a Milvus collection); resumable.
    Migrate(MigrateArgs),
    /// Check a store against the gallery's catalog and the exact local store.
    Verify(VerifyArgs),
}

/// Numeric precision the models run in.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Dtype {
    F32,
    Bf16,
    F16,
}

impl Dtype {
    pub fn engine(self) -> capmatch_engine::Dtype {
        match self {
            Dtype::F32 => capmatch_engine::Dtype::F32,
            Dtype::Bf16 => capmatch_engine::Dtype::Bf16,
            Dtype::F16 => capmatch_engine::Dtype::F16,
        }
    }
}

/// Where the models run.
#[derive(Args, Debug, Clone)]
pub struct DeviceArg {
    /// Device the models run on: cpu, cuda, cuda:N or metal (the last two need a build with
    /// the `cuda` or `metal` feature).
    #[arg(long, default_value = "cpu", env = "CAPMATCH_DEVICE")]
    pub device: String,
}

/// Where the vectors are (the catalog of files stays the `--db` SQLite file).
#[derive(Args, Debug, Clone)]
pub struct StoreArg {
    /// Vector store: `local` (the exact index beside --db) or milvus://HOST:PORT/COLLECTION
    /// (or milvus://HOST:PORT/DATABASE/COLLECTION).
    #[arg(long = "store", env = "CAPMATCH_STORE", default_value = "local")]
    pub store: String,
    /// File holding the Milvus token (user:password or API key); default: the
    /// CAPMATCH_MILVUS_TOKEN environment variable.
    /// (Named apart from `serve`'s own `--token-file`: clap keys arguments by field name.)
    #[arg(long = "store-token-file")]
    pub store_token_file: Option<PathBuf>,
}

impl StoreArg {
    pub fn store(&self) -> anyhow::Result<capmatch_engine::VectorStore> {
        Ok(capmatch_engine::VectorStore::parse(Some(&self.store), self.store_token_file.as_deref())?)
    }
}

/// Where the CLIP model comes from.
#[derive(Args, Debug, Clone)]
pub struct ClipArg {
    /// CLIP checkpoint: a local directory in the Hugging Face layout or a hub id.
    #[arg(long = "clip", env = "CAPMATCH_CLIP", default_value = "openai/clip-vit-base-patch32")]
    pub clip: String,
}

/// Where the captioner comes from.
#[derive(Args, Debug, Clone)]
pub struct CaptionerArg {
    /// Captioner checkpoint (BLIP or BLIP-2): a local directory or a hub id.
    #[arg(long = "captioner", env = "CAPMATCH_CAPTIONER", default_value = "Salesforce/blip-image-captioning-base")]
    pub captioner: String,
}

/// The models that index a gallery (`index`, `eval`) and how they run.
#[derive(Args, Debug, Clone)]
pub struct GalleryModelArgs {
    #[command(flatten)]
    pub clip: ClipArg,
    #[command(flatten)]
    pub captioner: CaptionerArg,
    /// Images per model batch.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Text prompt the caption continues; "" for unconditional captioning
    /// [default: "a picture of" for BLIP, none for BLIP-2].
    #[arg(long)]
    pub prompt: Option<String>,
    /// Longest caption, in new tokens [default: the captioner's generation config; BLIP: 20].
    /// Not recorded in the index: images captioned by earlier runs keep their captions.
    #[arg(long, value_name = "N")]
    pub max_new_tokens: Option<usize>,
    /// Shortest caption, in new tokens (end of text is not chosen before) [default: none].
    #[arg(long, value_name = "N")]
    pub min_new_tokens: Option<usize>,
    /// Model precision [default: f32; BLIP-2 captioner weights bf16].
    #[arg(long, value_enum)]
    pub dtype: Option<Dtype>,
    #[command(flatten)]
    pub device: DeviceArg,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("inputs").required(true).args(["image", "text"]))]
pub struct EmbedArgs {
    #[command(flatten)]
    pub clip: ClipArg,
    /// Image files to embed with the vision tower.
    #[arg(long, num_args = 1.., value_name = "PATH")]
    pub image: Vec<PathBuf>,
    /// Texts to embed with the text tower.
    #[arg(long, num_args = 1.., value_name = "STRING")]
    pub text: Vec<String>,
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Dtype,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CaptionArgs {
    #[command(flatten)]
    pub captioner: CaptionerArg,
    /// Text prompt the caption continues; "" for unconditional captioning
    /// [default: "a picture of" for BLIP, none for BLIP-2].
    #[arg(long)]
    pub prompt: Option<String>,
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    #[arg(long)]
    pub min_new_tokens: Option<usize>,
    /// Beam search with N beams (greedy when absent).
    #[arg(long)]
    pub beams: Option<usize>,
    /// Model precision [default: f32; BLIP-2 captioner weights bf16].
    #[arg(long, value_enum)]
    pub dtype: Option<Dtype>,
    #[command(flatten)]
    pub device: DeviceArg,
    #[arg(long)]
    pub json: bool,
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct IndexArgs {
    /// Folders to index (recursively).
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    #[arg(long, default_value = "capmatch.db")]
    pub db: PathBuf,
    #[command(flatten)]
    pub store: StoreArg,
    /// Index only shard I of N: the files whose content hash falls in it (N machines, each
    /// with its own --db, fill one shared --store).
    #[arg(long, value_name = "I/N")]
    pub shard: Option<capmatch_engine::Shard>,
    /// Domain tag for the images (default: the name of each top folder given).
    #[arg(long)]
    pub domain: Option<String>,
    #[command(flatten)]
    pub models: GalleryModelArgs,
    /// Forget indexed files that no longer exist.
    #[arg(long)]
    pub prune: bool,
    /// Largest decoded image (width × height) accepted; larger files are skipped.
    #[arg(long, default_value_t = 178_956_970)]
    pub max_pixels: u64,
    /// Also build the approximate index if there is no usable one (an existing one takes the
    /// run's new images by itself).
    #[arg(long)]
    pub ann: bool,
    #[command(flatten)]
    pub graph: GraphArgs,
}

/// How the approximate index's graphs are built.
#[derive(Args, Debug, Clone)]
pub struct GraphArgs {
    /// Edges per graph node (HNSW's M).
    #[arg(long, default_value_t = capmatch_engine::ann::GraphParams::default().connectivity)]
    pub connectivity: usize,
    /// Breadth of the search that links each new node (efConstruction).
    #[arg(long, default_value_t = capmatch_engine::ann::GraphParams::default().expansion_add)]
    pub expansion_add: usize,
}

#[derive(Subcommand, Debug)]
pub enum AnnCommand {
    /// Build (or rebuild) the approximate index from every indexed image.
    Build(AnnBuildArgs),
    /// Measure recall@k against exact search on a sample of the gallery's own images, and
    /// set the search breadth so that the target holds.
    Tune(AnnTuneArgs),
}

#[derive(Args, Debug)]
pub struct AnnBuildArgs {
    #[arg(long, default_value = "capmatch.db")]
    pub db: PathBuf,
    #[command(flatten)]
    pub graph: GraphArgs,
}

#[derive(Args, Debug)]
pub struct AnnTuneArgs {
    #[arg(long, default_value = "capmatch.db")]
    pub db: PathBuf,
    /// Recall@k to reach, in caption mode and in image mode.
    #[arg(long, default_value_t = 0.98)]
    pub target_recall: f64,
    /// Gallery images used as queries.
    #[arg(long, default_value_t = 200)]
    pub sample: usize,
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum SearchMode {
    /// Query image vs gallery captions (Caption-Matching, the default).
    Caption,
    /// Query image vs gallery images (the CLIP baseline).
    Image,
    /// W × caption score + (1 − W) × image score.
    Fused,
    /// Text query vs gallery images.
    Text,
    /// The query image's own captions vs gallery captions (the query is captioned first).
    CaptionText,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("query").required(true).args(["image", "text"]))]
pub struct SearchArgs {
    /// Query image.
    #[arg(value_name = "IMAGE")]
    pub image: Option<PathBuf>,
    /// Query text instead of an image.
    #[arg(long)]
    pub text: Option<String>,
    #[arg(long, default_value = "capmatch.db")]
    pub db: PathBuf,
    #[command(flatten)]
    pub store: StoreArg,
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    #[arg(long, value_enum)]
    pub mode: Option<SearchMode>,
    /// Weight of the caption score in `fused` mode.
    #[arg(long, default_value_t = 0.5)]
    pub weight: f32,
    /// Only search images of this domain.
    #[arg(long)]
    pub domain: Option<String>,
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Dtype,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Where the index's CLIP model is now, if not where the index recorded it (its config
    /// must be the recorded one).
    #[arg(long)]
    pub clip: Option<String>,
    /// Scan every image instead of using the approximate index.
    #[arg(long)]
    pub exact: bool,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[arg(long, default_value = "capmatch.db")]
    pub db: PathBuf,
    #[command(flatten)]
    pub store: StoreArg,
    #[arg(long)]
    pub json: bool,
    /// Check the index's integrity (the database, every file's vectors, every file still on
    /// disk) and say how to fix what is wrong; exits with status 1 if anything is.
    #[arg(long)]
    pub check: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum InspectMode {
    /// An image against the other's captions (Caption-Matching).
    Caption,
    /// Image vectors alone (the CLIP baseline).
    Image,
    /// W × caption score + (1 − W) × image score.
    Fused,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[arg(long, default_value = "capmatch.db")]
    pub db: PathBuf,
    #[command(flatten)]
    pub store: StoreArg,
    /// Folder to write the report into (index.html, report.json, CSV files, thumbnails).
    #[arg(long, default_value = "capmatch-report")]
    pub out: PathBuf,
    /// A reference to match the collection against: a domain of the index, or a folder
    /// (indexed first, under a domain named after it, with the index's models). Repeatable.
    #[arg(long, value_name = "DOMAIN|DIR")]
    pub against: Vec<PathBuf>,
    /// Score that decides "same subject", the clusters and the outliers.
    #[arg(long, value_enum, default_value = "caption")]
    pub mode: InspectMode,
    /// Weight of the caption score in `fused` mode.
    #[arg(long, default_value_t = 0.5)]
    pub weight: f32,
    /// Tier thresholds to change, e.g. `near=0.9,same=0.3,cross=0.25` [defaults, for
    /// CLIP ViT-B/32 with BLIP captions: near 0.95 (image score); same 0.28 in caption mode,
    /// 0.85 in image mode; cross 0.28 (caption score)].
    #[arg(long, value_name = "NAME=VALUE,...")]
    pub thresholds: Option<String>,
    /// Neighbours per image in each similarity graph.
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// Cluster copies only (identical files and near-duplicates) instead of every tier.
    #[arg(long)]
    pub cluster_copies: bool,
    /// Smallest cluster reported.
    #[arg(long, default_value_t = 2)]
    pub min_cluster: usize,
    /// Largest cluster; one that reaches it is reported with a warning.
    #[arg(long, default_value_t = 200)]
    pub max_cluster: usize,
    /// Most items listed per gallery (pairs per tier, clusters, matches per reference),
    /// strongest first; counts always cover everything.
    #[arg(long, default_value_t = 1000)]
    pub max_pairs: usize,
    /// Fraction of the images in each outlier list.
    #[arg(long, default_value_t = 0.05)]
    pub outlier_fraction: f64,
    /// Compute the similarity graphs afresh instead of updating the ones kept in
    /// DB.inspect/ by the last run.
    #[arg(long)]
    pub no_cache: bool,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
    /// Where the index's CLIP model is now, if not where the index recorded it (for
    /// indexing an --against folder).
    #[arg(long)]
    pub clip: Option<String>,
    /// Images per model batch when indexing an --against folder.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[command(flatten)]
    pub device: DeviceArg,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Dataset root laid out as ROOT/<domain>/<class>/<image>.
    #[arg(value_name = "ROOT")]
    pub root: PathBuf,
    /// office-home or domainnet: domains, classes and k of that benchmark.
    #[arg(long)]
    pub protocol: Option<String>,
    /// Comma-separated domains (default: the protocol's, else every folder).
    #[arg(long, value_delimiter = ',')]
    pub domains: Vec<String>,
    /// Comma-separated classes.
    #[arg(long, value_delimiter = ',', conflicts_with = "classes_file")]
    pub classes: Vec<String>,
    /// File with one class per line.
    #[arg(long)]
    pub classes_file: Option<PathBuf>,
    /// Comma-separated k for P@k and R@k (overrides the protocol's).
    #[arg(long, value_delimiter = ',')]
    pub k: Vec<usize>,
    /// Comma-separated modes: caption, image, fused, caption-text (default: all).
    #[arg(long, value_delimiter = ',')]
    pub modes: Vec<String>,
    #[arg(long, default_value_t = 0.5)]
    pub weight: f32,
    /// Index database (default: ROOT/.capmatch.db).
    #[arg(long)]
    pub db: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArg,
    /// Write results.md, results.csv, results.json and precision.svg/.png here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub models: GalleryModelArgs,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[arg(long, default_value = "capmatch.db")]
    pub db: PathBuf,
    #[command(flatten)]
    pub store: StoreArg,
    /// Address to listen on (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 7860)]
    pub port: u16,
    /// File holding the bearer token that enables uploads and index jobs (read-only
    /// without it; the gallery is then opened for searching only).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Largest request body (an upload, a query image), in MiB.
    #[arg(long, default_value_t = 20)]
    pub max_upload_mb: usize,
    /// Folder that `POST /api/index` may index, with its subfolders (repeatable).
    #[arg(long, value_name = "DIR")]
    pub allow_index_root: Vec<PathBuf>,
    /// Origin allowed to call the API from a web page elsewhere (repeatable; default: none).
    #[arg(long, value_name = "ORIGIN")]
    pub cors: Vec<String>,
    /// A static folder (the inspection report) served at /inspect.
    #[arg(long, value_name = "DIR")]
    pub inspect_dir: Option<PathBuf>,
    /// CLIP checkpoint [default: the one the index was built with].
    #[arg(long, env = "CAPMATCH_CLIP")]
    pub clip: Option<String>,
    /// Captioner checkpoint, for uploads and index jobs [default: the index's].
    #[arg(long, env = "CAPMATCH_CAPTIONER")]
    pub captioner: Option<String>,
    /// Caption prompt for new images [default: the index's].
    #[arg(long)]
    pub prompt: Option<String>,
    /// Model precision [default: f32; BLIP-2 captioner weights bf16].
    #[arg(long, value_enum)]
    pub dtype: Option<Dtype>,
    #[command(flatten)]
    pub device: DeviceArg,
    /// Images per model batch in uploads and index jobs.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Most concurrent searches embedded together.
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Longest a search waits for others to join its batch, in milliseconds.
    #[arg(long, default_value_t = 2)]
    pub max_wait_ms: u64,
    /// Longest a request may take, in seconds.
    #[arg(long, default_value_t = 120)]
    pub request_timeout: u64,
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The gallery whose local vectors are copied (its catalog stays where it is).
    #[arg(long, value_name = "DB")]
    pub from: PathBuf,
    /// The store to copy them into: milvus://HOST:PORT/COLLECTION.
    #[arg(long, value_name = "STORE")]
    pub to: String,
    /// File holding the Milvus token; default: the CAPMATCH_MILVUS_TOKEN environment variable.
    #[arg(long)]
    pub store_token_file: Option<PathBuf>,
    /// Images per write.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[arg(long, default_value = "capmatch.db")]
    pub db: PathBuf,
    #[command(flatten)]
    pub store: StoreArg,
    /// Gallery images searched with, in both stores.
    #[arg(long, default_value_t = 100)]
    pub queries: usize,
    /// Results compared per search (recall@k).
    #[arg(short, long, default_value_t = 10)]
    pub k: usize,
    /// Lowest mean recall@k that passes (an exact store gives 1 up to float ties).
    #[arg(long, default_value_t = 0.99)]
    pub min_recall: f64,
    #[arg(long)]
    pub json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    commands::init_logging();
    let result = match cli.command {
        Command::Embed(args) => commands::embed::run(args),
        Command::Caption(args) => commands::caption::run(args),
        Command::Index(args) => commands::index::run(args),
        Command::Search(args) => commands::search::run(args),
        Command::Info(args) => commands::info::run(args),
        Command::Ann(command) => commands::ann::run(command),
        Command::Eval(args) => commands::eval::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Migrate(args) => commands::migrate::migrate(args),
        Command::Verify(args) => commands::migrate::verify(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One clear line: the error and its causes, outermost first.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::Path;

    /// clap keys each argument by its field name and checks for duplicates only in debug
    /// builds; in a release build two fields with one name share a value.
    #[test]
    fn no_two_arguments_of_a_command_share_an_id() {
        fn check(cmd: &clap::Command, path: &str) {
            let mut seen = std::collections::HashSet::new();
            for arg in cmd.get_arguments() {
                assert!(seen.insert(arg.get_id().clone()), "{path}: two arguments named {:?}", arg.get_id());
            }
            for sub in cmd.get_subcommands() {
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        check(&Cli::command(), "capmatch");
    }

    /// Two flags whose fields share a name (a flattened group's and the command's own) get
    /// one value between them in a release build, where clap does not check for it: serve's
    /// `--token-file` was once read as None because `--store-token-file`'s field had its name.
    #[test]
    fn serve_keeps_its_token_file_apart_from_the_stores() {
        let cli = Cli::try_parse_from([
            "capmatch", "serve", "--db", "g.db", "--token-file", "bearer.txt", "--store", "milvus://h:1/c",
            "--store-token-file", "milvus.txt",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else { panic!("not serve") };
        assert_eq!(args.token_file.as_deref(), Some(Path::new("bearer.txt")));
        assert_eq!(args.store.store_token_file.as_deref(), Some(Path::new("milvus.txt")));
        let cli = Cli::try_parse_from(["capmatch", "serve", "--db", "g.db", "--token-file", "bearer.txt"]).unwrap();
        let Command::Serve(args) = cli.command else { panic!("not serve") };
        assert_eq!(args.token_file.as_deref(), Some(Path::new("bearer.txt")));
        assert_eq!(args.store.store_token_file, None);
    }
}
