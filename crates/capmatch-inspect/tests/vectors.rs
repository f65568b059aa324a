//! Inspections of hand-built vector sets, through the real exact index: every tier, the
//! outliers, counts by image, `--against`, and the incremental graph against a full one.

use capmatch_engine::{GraphProgress, NeighbourQuery, Neighbours};
use capmatch_inspect::graph::{self, GraphSpec, Space};
use capmatch_inspect::{inspect, Image, InspectOptions, MatchMode, Quiet, Source, Tier};
use capmatch_retrieval::ComponentScores;
use capmatch_store::exact::Access;
use capmatch_store::{ExactIndex, ImageId, VectorIndex, VectorRecord};

const DIM: usize = 8;

/// An exact index and the catalog's view of its images.
struct Gallery {
    index: ExactIndex,
    images: Vec<Image>,
    _dir: tempfile::TempDir,
}

impl Source for Gallery {
    fn images(&self) -> capmatch_inspect::Result<Vec<Image>> {
        Ok(self.images.clone())
    }
    fn generation(&self) -> capmatch_inspect::Result<u64> {
        Ok(self.index.generation())
    }
    fn neighbours(&self, query: &NeighbourQuery<'_>, progress: &dyn GraphProgress) -> capmatch_inspect::Result<Vec<Neighbours>> {
        Ok(self.index.neighbours(query, progress)?)
    }
    fn score_pairs(&self, pairs: &[(ImageId, ImageId)]) -> capmatch_inspect::Result<Vec<Option<ComponentScores>>> {
        Ok(self.index.score_pairs(pairs)?)
    }
}

fn unit(v: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; DIM];
    out[..v.len()].copy_from_slice(v);
    capmatch_retrieval::normalize(&mut out).unwrap();
    out
}

/// Basis vector `i` plus `eps` of basis vector `j`.
fn e(i: usize, j: usize, eps: f32) -> Vec<f32> {
    let mut v = vec![0.0; DIM];
    v[i] = 1.0;
    v[j] += eps;
    unit(&v)
}

struct Spec {
    name: &'static str,
    domain: &'static str,
    hash: &'static str,
    image: Vec<f32>,
    caption: Vec<f32>,
}

fn gallery(specs: &[Spec]) -> Gallery {
    let dir = tempfile::tempdir().unwrap();
    let mut index = ExactIndex::open(&dir.path().join("v"), Access::ReadWrite, None).unwrap();
    add(&mut index, specs);
    let images = specs.iter().map(image_of).collect();
    Gallery { index, images, _dir: dir }
}

fn image_of(s: &Spec) -> Image {
    Image {
        id: ImageId::for_path(s.name),
        path: format!("/collection/{}.png", s.name),
        domain: s.domain.into(),
        hash: s.hash.into(),
        captions: vec![format!("a picture of {}", s.name)],
    }
}

fn add(index: &mut ExactIndex, specs: &[Spec]) {
    let records: Vec<VectorRecord> = specs
        .iter()
        .map(|s| VectorRecord { id: ImageId::for_path(s.name), domain: s.domain.into(), image: s.image.clone(), captions: s.caption.clone() })
        .collect();
    index.upsert(&records).unwrap();
}

/// A photo of a lemon, an identical file and a resized copy of it, a drawing of a lemon
/// (other pixels, a caption that matches the photo), two photos of grapes, and a loner
/// whose caption has nothing to do with it.
fn collection() -> Vec<Spec> {
    let lemon_caption = unit(&[0.8, 0.0, 0.0, 0.6]);
    vec![
        Spec { name: "lemon", domain: "photo", hash: "h-lemon", image: e(0, 1, 0.0), caption: lemon_caption.clone() },
        Spec { name: "lemon-copy", domain: "photo", hash: "h-lemon", image: e(0, 1, 0.0), caption: lemon_caption.clone() },
        Spec { name: "lemon-small", domain: "photo", hash: "h-lemon-small", image: e(0, 1, 0.1), caption: lemon_caption.clone() },
        // The drawing's pixels are nothing like the photo's (a negative image score), its
        // caption is.
        Spec { name: "lemon-drawing", domain: "drawing", hash: "h-drawing", image: unit(&[-0.2, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.5]), caption: unit(&[0.6, 0.0, 0.0, 0.8]) },
        Spec { name: "grapes", domain: "photo", hash: "h-grapes", image: e(5, 6, 0.0), caption: unit(&[0.0, 0.0, 0.0, 0.0, 0.0, 0.6, 0.8]) },
        Spec { name: "grapes-2", domain: "photo", hash: "h-grapes-2", image: e(5, 6, 0.8), caption: unit(&[0.0, 0.0, 0.0, 0.0, 0.0, 0.8, 0.6]) },
        Spec { name: "loner", domain: "drawing", hash: "h-loner", image: e(7, 2, 0.3), caption: unit(&[0.0, 0.0, 0.0, 0.0, 1.0]) },
    ]
}

fn pair_of(images: &[Image], p: &capmatch_inspect::Pair) -> (String, String) {
    let name = |i: usize| images[i].path.trim_start_matches("/collection/").trim_end_matches(".png").to_string();
    let (a, b) = (name(p.a), name(p.b));
    if a < b { (a, b) } else { (b, a) }
}

#[test]
fn every_tier_outliers_and_counts_by_image() {
    let g = gallery(&collection());
    let mut options = InspectOptions::new(MatchMode::Caption);
    options.k = 2;
    let r = inspect(&g, &options, &Quiet).unwrap();
    let tier = |a: &str, b: &str| {
        r.pairs.iter().find(|p| pair_of(&r.images, p) == (a.min(b).to_string(), a.max(b).to_string())).map(|p| p.tier)
    };
    assert_eq!(tier("lemon", "lemon-copy"), Some(Tier::Identical));
    assert_eq!(tier("lemon", "lemon-small"), Some(Tier::NearDuplicate));
    assert_eq!(tier("lemon-copy", "lemon-small"), Some(Tier::NearDuplicate));
    assert_eq!(tier("lemon", "lemon-drawing"), Some(Tier::CrossDomain));
    assert_eq!(tier("grapes", "grapes-2"), Some(Tier::SameSubject));
    assert!(r.pairs.iter().all(|p| !pair_of(&r.images, p).0.contains("loner") && !pair_of(&r.images, p).1.contains("loner")));
    assert!(r.pairs.iter().all(|p| tier_is_consistent(p)), "{:?}", r.pairs);

    // The drawing was found by the captions: the image space does not rank it in the top 2.
    let drawing = r.pairs.iter().find(|p| p.tier == Tier::CrossDomain).unwrap();
    assert_eq!(drawing.image_rank, None);
    assert!(drawing.scores.image < 0.0);
    assert!(drawing.scores.caption() > 0.4);

    // Counts by image.
    let c = &r.counts.all;
    assert_eq!(c.images, 7);
    assert_eq!(c.any_copy, 3, "three lemon photos, however many pairs");
    assert_eq!(c.identical, 2);
    assert_eq!(c.same_subject, 2);
    assert_eq!(c.cross_domain, 4, "the drawing and each lemon photo it matches");
    assert_eq!(c.any_match, 6);
    assert_eq!(r.counts.by_domain["drawing"].images, 2);

    // The loner: weakest nearest neighbour, and its own caption disagrees with it.
    let loner = r.images.iter().position(|i| i.path.contains("loner")).unwrap();
    assert_eq!(r.outliers.weakest_neighbour[0].image, loner);
    assert_eq!(r.outliers.caption_disagreement[0].image, loner);
    assert_eq!(r.outliers.weakest_neighbour.len(), 1, "5 % of 7 images");

    // A cluster of the three lemon photos (and the drawing, which matches all three).
    let biggest = &r.clustering.clusters[0];
    assert_eq!(biggest.size(), 4, "{:?}", r.clustering);
}

fn tier_is_consistent(p: &capmatch_inspect::Pair) -> bool {
    match p.tier {
        Tier::NearDuplicate => p.scores.image >= capmatch_inspect::tiers::NEAR_DUPLICATE,
        Tier::CrossDomain | Tier::SameSubject => p.scores.caption() >= capmatch_inspect::tiers::CAPTION_MATCH,
        Tier::Identical => true,
    }
}

#[test]
fn against_a_reference_domain() {
    let g = gallery(&collection());
    let mut options = InspectOptions::new(MatchMode::Caption);
    options.k = 2;
    options.against = vec!["drawing".into()];
    let r = inspect(&g, &options, &Quiet).unwrap();
    let a = &r.against[0];
    assert_eq!((a.collection, a.references), (5, 2));
    assert_eq!(a.images_with_match, 3, "the three lemon photos reproduce the drawing");
    let best = &a.matches[0];
    assert!(r.images[best.reference].path.contains("lemon-drawing"));
    assert_eq!(best.tier, Some(Tier::CrossDomain));
    assert!(a.matches.iter().all(|m| r.images[m.reference].domain == "drawing" && r.images[m.image].domain != "drawing"));
    assert!(a.matches.windows(2).all(|w| w[0].score >= w[1].score), "strongest first");
    options.against = vec!["sculpture".into()];
    let err = inspect(&g, &options, &Quiet).unwrap_err().to_string();
    assert!(err.contains("sculpture") && err.contains("drawing, photo"), "{err}");
}

/// Random clustered vectors: `n` images around `n / 8` centres, in three domains.
fn random_specs(n: usize, seed: u64, offset: usize) -> Vec<(String, String, Vec<f32>, Vec<f32>)> {
    let mut rng = capmatch_store::contract::Rng(seed | 1);
    let centres: Vec<Vec<f32>> = (0..(n / 8).max(1)).map(|_| rng.unit(DIM)).collect();
    (0..n)
        .map(|i| {
            let c = &centres[(rng.next() as usize) % centres.len()];
            let noise = rng.unit(DIM);
            let image = unit(&c.iter().zip(&noise).map(|(a, b)| a + 0.3 * b).collect::<Vec<_>>());
            let noise = rng.unit(DIM);
            let caption = unit(&c.iter().zip(&noise).map(|(a, b)| a + 0.5 * b).collect::<Vec<_>>());
            (format!("r{}", i + offset), ["photo", "sketch", "paint"][i % 3].to_string(), image, caption)
        })
        .collect()
}

#[test]
fn an_incremental_graph_equals_a_full_one() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let mut index = ExactIndex::open(&dir.path().join("v"), Access::ReadWrite, None).unwrap();
    let to_records = |specs: &[(String, String, Vec<f32>, Vec<f32>)]| -> Vec<VectorRecord> {
        specs
            .iter()
            .map(|(name, domain, image, caption)| VectorRecord {
                id: ImageId::for_path(name),
                domain: domain.clone(),
                image: image.clone(),
                captions: caption.clone(),
            })
            .collect()
    };
    let to_images = |specs: &[(String, String, Vec<f32>, Vec<f32>)]| -> Vec<Image> {
        specs
            .iter()
            .map(|(name, domain, _, _)| Image {
                id: ImageId::for_path(name),
                path: name.clone(),
                domain: domain.clone(),
                hash: format!("{name}-v1"),
                captions: vec![],
            })
            .collect()
    };
    let mut specs = random_specs(300, 5, 0);
    index.upsert(&to_records(&specs)).unwrap();
    let mut g = Gallery { images: to_images(&specs), index, _dir: tempfile::tempdir().unwrap() };
    let spec_all = GraphSpec { space: Space::Caption, k: 7, among: None };
    let spec_against = GraphSpec { space: Space::Image, k: 5, among: Some("sketch".into()) };
    for spec in [&spec_all, &spec_against] {
        let (_, work) = graph::build(&g, &g.images.clone(), spec, Some(&cache), &Quiet).unwrap();
        assert_eq!(work.reused, 0);
        let (_, again) = graph::build(&g, &g.images.clone(), spec, Some(&cache), &Quiet).unwrap();
        assert_eq!((again.reused, again.computed, again.updated), (work.computed, 0, 0), "nothing changed, nothing computed");
    }

    // New images, a removed one, and one whose file changed.
    let added = random_specs(40, 9, 1000);
    specs.extend(added.iter().cloned());
    let removed = specs.remove(17);
    specs[30].2 = unit(&specs[30].2.iter().rev().copied().collect::<Vec<_>>());
    g.index.upsert(&to_records(&added)).unwrap();
    g.index.upsert(&to_records(&specs[30..31])).unwrap();
    g.index.remove(&[ImageId::for_path(&removed.0)]).unwrap();
    g.images = to_images(&specs);
    g.images[30].hash = "changed".into();
    for spec in [&spec_all, &spec_against] {
        let (incremental, work) = graph::build(&g, &g.images.clone(), spec, Some(&cache), &Quiet).unwrap();
        assert!(work.updated > 0 && work.computed < g.images.len() / 2, "{spec:?}: {work:?}");
        let (full, _) = graph::build(&g, &g.images.clone(), spec, None, &Quiet).unwrap();
        assert_eq!(incremental.rows.len(), full.rows.len(), "{spec:?}");
        for (id, hits) in &full.rows {
            let got: Vec<(ImageId, u32)> = incremental.row(*id).iter().map(|h| (h.id, h.score.to_bits())).collect();
            let mut want: Vec<(ImageId, u32)> = hits.iter().map(|h| (h.id, h.score.to_bits())).collect();
            let mut got_sorted = got.clone();
            got_sorted.sort();
            want.sort();
            assert_eq!(got_sorted, want, "{spec:?}: row of {id}");
        }
    }
}
