//! Writes the report files of a synthetic run, to look at them:
//! `cargo run --release -p capmatch-eval --example report_demo -- OUT_DIR [office-home|domainnet]`.

use capmatch_eval::{evaluate, report, EvalConfig, EvalItem, Protocol};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args.next().unwrap_or_else(|| "report-demo".into());
    let protocol = Protocol::by_name(&args.next().unwrap_or_else(|| "office-home".into()))?;
    let classes = protocol.classes.clone().unwrap_or_else(|| (0..5).map(|c| format!("class{c}")).collect());
    let mut seed = 12345u64;
    let mut rnd = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 40) as f32 / (1u64 << 24) as f32
    };
    let dim = classes.len() + 4;
    let mut items = Vec::new();
    for (d, domain) in protocol.domains.iter().enumerate() {
        for i in 0..60 {
            let c = i % classes.len();
            let noise = 0.4 + 0.25 * d as f32;
            let mut v: Vec<f32> = (0..dim).map(|_| noise * rnd()).collect();
            v[c] += 1.0;
            v[classes.len() + d % 4] += 0.8;
            let mut cap: Vec<f32> = (0..dim).map(|_| 0.5 * rnd()).collect();
            cap[c] += 1.0;
            items.push(EvalItem { domain: domain.clone(), class: classes[c].clone(), image_embedding: v, caption_embeddings: vec![cap] });
        }
    }
    let config = EvalConfig { protocol: protocol.name.clone(), domains: protocol.domains.clone(), ks: protocol.ks.clone(), ..EvalConfig::default() };
    let r = evaluate(&items, &config, &|_| {})?;
    print!("{}", report::text_tables(&r));
    for p in report::write_all(&r, std::path::Path::new(&out))? {
        println!("wrote {}", p.display());
    }
    Ok(())
}
