//! The CSV files: `pairs.csv`, `clusters.csv`, `outliers.csv` and, with `--against`,
//! `against.csv`. One header line; paths and captions quoted when they need it; a score
//! without a value is an empty field.

use std::fmt::Write as _;

use crate::report::Listing;
use crate::tiers::Tier;
use crate::Inspection;

fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn score(x: f32) -> String {
    if x.is_finite() {
        format!("{x:.6}")
    } else {
        String::new()
    }
}

fn caption(inspection: &Inspection, i: usize) -> String {
    field(inspection.images[i].captions.first().map(String::as_str).unwrap_or(""))
}

/// `tier,score,image,caption,caption_a_to_b,caption_b_to_a,image_rank,a_path,a_domain,b_path,b_domain,a_caption,b_caption`
pub fn pairs(inspection: &Inspection, listing: &Listing<'_>) -> String {
    let mut s = String::from("tier,score,image,caption,caption_a_to_b,caption_b_to_a,image_rank,a_path,a_domain,b_path,b_domain,a_caption,b_caption\n");
    for p in &listing.pairs {
        let (a, b) = (&inspection.images[p.a], &inspection.images[p.b]);
        writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{}",
            p.tier.name(),
            score(p.score),
            score(p.scores.image),
            score(p.scores.caption()),
            score(p.scores.caption_ab),
            score(p.scores.caption_ba),
            p.image_rank.map(|r| r.to_string()).unwrap_or_default(),
            field(&a.path),
            field(&a.domain),
            field(&b.path),
            field(&b.domain),
            caption(inspection, p.a),
            caption(inspection, p.b),
        )
        .expect("writing to a String");
    }
    s
}

/// `cluster,size,role,tier,score,path,domain,caption` — one line per image, the medoid
/// first (its tier and score empty).
pub fn clusters(inspection: &Inspection, listing: &Listing<'_>) -> String {
    let mut s = String::from("cluster,size,role,tier,score,path,domain,caption\n");
    for (n, c) in listing.clusters.iter().enumerate() {
        let img = &inspection.images[c.medoid];
        writeln!(s, "{},{},medoid,,,{},{},{}", n + 1, c.size(), field(&img.path), field(&img.domain), caption(inspection, c.medoid))
            .expect("writing to a String");
        for m in &c.members {
            let img = &inspection.images[m.image];
            writeln!(
                s,
                "{},{},member,{},{},{},{},{}",
                n + 1,
                c.size(),
                m.tier.name(),
                score(m.score),
                field(&img.path),
                field(&img.domain),
                caption(inspection, m.image)
            )
            .expect("writing to a String");
        }
    }
    s
}

/// `kind,rank,score,path,domain,caption,neighbour_path` (kind: `weakest-neighbour` or
/// `caption-disagreement`).
pub fn outliers(inspection: &Inspection) -> String {
    let mut s = String::from("kind,rank,score,path,domain,caption,neighbour_path\n");
    let lists = [("weakest-neighbour", &inspection.outliers.weakest_neighbour), ("caption-disagreement", &inspection.outliers.caption_disagreement)];
    for (kind, list) in lists {
        for (r, o) in list.iter().enumerate() {
            let img = &inspection.images[o.image];
            let neighbour = o.neighbour.map(|j| field(&inspection.images[j].path)).unwrap_or_default();
            writeln!(s, "{kind},{},{},{},{},{},{neighbour}", r + 1, score(o.score), field(&img.path), field(&img.domain), caption(inspection, o.image))
                .expect("writing to a String");
        }
    }
    s
}

/// `domain,rank,score,image,caption,caption_a_to_b,caption_b_to_a,tier,path,reference_path,caption_of_path,caption_of_reference`
/// (`rank`: the reference's rank among the image's matches).
pub fn against(inspection: &Inspection, listing: &Listing<'_>) -> String {
    let mut s = String::from(
        "domain,rank,score,image,caption,caption_a_to_b,caption_b_to_a,tier,path,reference_path,caption_of_path,caption_of_reference\n",
    );
    for (a, listed) in inspection.against.iter().zip(&listing.against) {
        for m in listed.iter() {
            writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{},{}",
                field(&a.domain),
                m.rank,
                score(m.score),
                score(m.scores.image),
                score(m.scores.caption()),
                score(m.scores.caption_ab),
                score(m.scores.caption_ba),
                m.tier.map(Tier::name).unwrap_or(""),
                field(&inspection.images[m.image].path),
                field(&inspection.images[m.reference].path),
                caption(inspection, m.image),
                caption(inspection, m.reference),
            )
            .expect("writing to a String");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_are_quoted_when_they_must_be() {
        assert_eq!(super::field("a,b"), "\"a,b\"");
        assert_eq!(super::field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(super::field("plain"), "plain");
        assert_eq!(super::score(f32::NEG_INFINITY), "");
    }
}
