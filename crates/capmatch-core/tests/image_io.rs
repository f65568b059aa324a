//! Decoding against Pillow's reference pixels (fixtures/images/formats, written by
//! tools/reference/image_io_fixtures.py), EXIF orientation, and every kind of bad input.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use capmatch_core::image_io::{
    catch_decoder_panic, decode_bytes, decode_bytes_with, decode_file, decode_file_with, is_image_path,
    to_rgb_over_white, DecodeError, DecodeLimits, DecodeOptions, ReducedScale, SUPPORTED_EXTENSIONS, SVG_MAX_SIDE,
};
use capmatch_core::preprocess::{ImageProcessor, ResizeTarget};
use image::RgbImage;
use serde_json::Value;

/// Records the largest single allocation of this test binary, to prove that bombs are
/// refused before their pixel buffer is allocated.
struct LargestAllocation;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: LargestAllocation = LargestAllocation;

fn formats_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/images/formats")
}

struct Sample {
    file: String,
    format: String,
    width: u32,
    height: u32,
    reference: Vec<u8>,
    max_abs_diff: u8,
    mean_abs_diff: f64,
}

fn samples() -> Vec<Sample> {
    let dir = formats_dir();
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    manifest["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Sample {
            file: s["file"].as_str().unwrap().to_string(),
            format: s["format"].as_str().unwrap().to_string(),
            width: s["width"].as_u64().unwrap() as u32,
            height: s["height"].as_u64().unwrap() as u32,
            reference: std::fs::read(dir.join(s["reference"].as_str().unwrap())).unwrap(),
            max_abs_diff: s["max_abs_diff"].as_u64().unwrap() as u8,
            mean_abs_diff: s["mean_abs_diff"].as_f64().unwrap(),
        })
        .collect()
}

fn sample(file: &str) -> Sample {
    samples().into_iter().find(|s| s.file == file).unwrap_or_else(|| panic!("{file} not in manifest"))
}

/// `(max abs difference, mean abs difference)` between a decode and a reference.
fn diff(got: &RgbImage, reference: &[u8]) -> (u8, f64) {
    assert_eq!(got.as_raw().len(), reference.len());
    let mut max = 0u8;
    let mut sum = 0u64;
    for (a, b) in got.as_raw().iter().zip(reference) {
        let d = a.abs_diff(*b);
        max = max.max(d);
        sum += d as u64;
    }
    (max, sum as f64 / reference.len() as f64)
}

/// Decodes a sample and checks it against Pillow's pixels; `Err` describes the mismatch.
fn check_sample(s: &Sample) -> Result<(), String> {
    let img = decode_file(&formats_dir().join(&s.file), &DecodeLimits::default())
        .map_err(|e| format!("{}: decode failed: {e}", s.file))?;
    if img.dimensions() != (s.width, s.height) {
        return Err(format!("{}: size {:?}, Pillow {:?}", s.file, img.dimensions(), (s.width, s.height)));
    }
    let (max, mean) = diff(&img, &s.reference);
    if max > s.max_abs_diff || mean > s.mean_abs_diff {
        return Err(format!(
            "{}: max diff {max} (allowed {}), mean diff {mean:.3} (allowed {})",
            s.file, s.max_abs_diff, s.mean_abs_diff
        ));
    }
    Ok(())
}

#[test]
fn every_sample_matches_pillow() {
    let all = samples();
    let failures: Vec<String> = all.iter().filter_map(|s| check_sample(s).err()).collect();
    assert!(failures.is_empty(), "mismatches with Pillow:\n{}", failures.join("\n"));
    // Every format is represented, and lossless formats are held to exact equality.
    for format in ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"] {
        assert!(all.iter().any(|s| s.format == format), "no {format} sample");
    }
    // Everything is held to exact equality (JPEG included) but lossy WebP.
    for s in &all {
        let lossy_webp = s.file.starts_with("webp_lossy");
        assert_eq!(s.max_abs_diff == 0, !lossy_webp, "{}: tolerance must be zero exactly", s.file);
    }
}

#[test]
fn jpeg_exif_orientations_1_to_8_are_applied() {
    let refs: Vec<Sample> = (1..=8).map(|n| sample(&format!("jpeg_orientation_{n}.jpg"))).collect();
    for (i, s) in refs.iter().enumerate() {
        let n = i + 1;
        check_sample(s).unwrap();
        let img = decode_file(&formats_dir().join(&s.file), &DecodeLimits::default()).unwrap();
        // 5–8 swap width and height.
        assert_eq!(img.dimensions(), if n >= 5 { (16, 24) } else { (24, 16) }, "orientation {n}");
        // The decode is far closer to its own orientation than to any other one.
        for (j, other) in refs.iter().enumerate() {
            if j != i && other.width == s.width {
                let (_, mean) = diff(&img, &other.reference);
                assert!(mean > 20.0, "orientation {n} looks like orientation {} (mean diff {mean})", j + 1);
            }
        }
    }
}

#[test]
fn png_webp_tiff_exif_orientation_is_applied_exactly() {
    for file in ["png_orientation_3.png", "png_orientation_6.png", "png_orientation_8.png", "webp_orientation_6.webp", "tiff_orientation_6.tif"] {
        check_sample(&sample(file)).unwrap();
    }
    let plain = decode_file(&formats_dir().join("png_rgb.png"), &DecodeLimits::default()).unwrap();
    let rotated = decode_file(&formats_dir().join("png_orientation_6.png"), &DecodeLimits::default()).unwrap();
    // Orientation 6: rotate 90° clockwise, so the top-left pixel comes from the bottom-left.
    assert_eq!(rotated.dimensions(), (16, 24));
    assert_eq!(rotated.get_pixel(0, 0), plain.get_pixel(0, 15));
    assert_eq!(rotated.get_pixel(15, 0), plain.get_pixel(0, 0));
}

#[test]
fn cmyk_jpeg_is_converted_like_pillow() {
    let bytes = std::fs::read(formats_dir().join("jpeg_cmyk.jpg")).unwrap();
    // The sample really is a 4-component (Adobe CMYK) JPEG: SOF0 with 4 components.
    let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    assert_eq!(bytes[sof + 9], 4, "fixture is not a CMYK JPEG");
    check_sample(&sample("jpeg_cmyk.jpg")).unwrap();
    // Not inverted: the top-left quadrant is red-ish.
    let img = decode_bytes(&bytes, &DecodeLimits::default()).unwrap();
    let p = img.get_pixel(2, 2);
    assert!(p[0] > 180 && p[1] < 90 && p[2] < 90, "{p:?}");
}

#[test]
fn sixteen_bit_png_is_reduced_by_rounding() {
    check_sample(&sample("png_rgb16.png")).unwrap();
    check_sample(&sample("png_grey16.png")).unwrap();
    let img = decode_file(&formats_dir().join("png_grey16.png"), &DecodeLimits::default()).unwrap();
    // The script put 0, 128, 129, 65535 in the first row: round(v / 257) = 0, 0, 1, 255.
    let first: Vec<u8> = (0..4).map(|x| img.get_pixel(x, 0)[0]).collect();
    assert_eq!(first, vec![0, 0, 1, 255]);
}

#[test]
fn palette_transparency_is_composited_over_white() {
    check_sample(&sample("png_palette_trns.png")).unwrap();
    check_sample(&sample("gif_animated.gif")).unwrap();
    check_sample(&sample("png_rgb_colour_key.png")).unwrap();
    // Some pixel of each is fully transparent, hence pure white (the opaque samples never are).
    for file in ["png_palette_trns.png", "gif_animated.gif", "png_rgb_colour_key.png"] {
        let img = decode_file(&formats_dir().join(file), &DecodeLimits::default()).unwrap();
        assert!(img.pixels().any(|p| p.0 == [255, 255, 255]), "{file}: no white pixel");
        let opaque = decode_file(&formats_dir().join("png_rgb.png"), &DecodeLimits::default()).unwrap();
        assert!(!opaque.pixels().any(|p| p.0 == [255, 255, 255]));
    }
}

#[test]
fn alpha_blend_arithmetic() {
    let rgba = image::RgbaImage::from_raw(3, 1, vec![200, 100, 0, 128, 10, 20, 30, 0, 1, 2, 3, 255]).unwrap();
    let rgb = to_rgb_over_white(image::DynamicImage::ImageRgba8(rgba));
    // (200*128 + 255*127 + 127) / 255 = 227, (100*128 + 32385 + 127)/255 = 177, (0 + 32385 + 127)/255 = 127
    assert_eq!(rgb.as_raw(), &vec![227, 177, 127, 255, 255, 255, 1, 2, 3]);
}

#[test]
fn format_comes_from_content_not_extension() {
    let dir = tempfile::tempdir().unwrap();
    for (src, disguise) in [("png_rgb.png", "really_png.jpg"), ("jpeg_rgb.jpg", "really_jpeg.png"), ("webp_lossless.webp", "noext")] {
        let path = dir.path().join(disguise);
        std::fs::copy(formats_dir().join(src), &path).unwrap();
        let s = sample(src);
        let img = decode_file(&path, &DecodeLimits::default()).unwrap();
        let (max, _) = diff(&img, &s.reference);
        assert!(max <= s.max_abs_diff, "{disguise}");
    }
}

#[test]
fn empty_file_and_empty_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.jpg");
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(decode_file(&path, &DecodeLimits::default()), Err(DecodeError::Empty)));
    assert!(matches!(decode_bytes(&[], &DecodeLimits::default()), Err(DecodeError::Empty)));
}

#[test]
fn truncated_files_of_every_format_are_corrupt() {
    for s in samples() {
        let bytes = std::fs::read(formats_dir().join(&s.file)).unwrap();
        let mut cuts = vec![bytes.len() / 3, bytes.len() / 2, bytes.len() * 2 / 3];
        if s.format == "JPEG" {
            cuts.push(bytes.len() - 2); // all scan data but the end-of-image marker
        }
        for cut in cuts {
            match decode_bytes(&bytes[..cut], &DecodeLimits::default()) {
                Err(DecodeError::Corrupt(reason)) => assert!(!reason.is_empty() && !reason.contains('\n')),
                // An animated GIF cut inside a later frame still has its whole first frame.
                Ok(img) if s.format == "GIF" && img.as_raw() == &s.reference => {}
                other => panic!("{} cut to {cut} of {} bytes: {other:?}", s.file, bytes.len()),
            }
        }
    }
}

#[test]
fn jpeg_fixtures_cover_what_pillow_decodes_differently() {
    let all = samples();
    let jpegs: Vec<&Sample> = all.iter().filter(|s| s.format == "JPEG").collect();
    let bytes = |s: &Sample| std::fs::read(formats_dir().join(&s.file)).unwrap();
    // Frame types: baseline (SOF0) and progressive (SOF2).
    let has_marker = |b: &[u8], m: u8| b.windows(2).any(|w| w == [0xFF, m]);
    assert!(jpegs.iter().any(|s| has_marker(&bytes(s), 0xC0)));
    assert!(jpegs.iter().filter(|s| has_marker(&bytes(s), 0xC2)).count() >= 5);
    // Restart intervals (DRI) and the Adobe YCCK transform (APP14, transform 2).
    assert!(jpegs.iter().filter(|s| has_marker(&bytes(s), 0xDD)).count() >= 2);
    let ycck = bytes(&sample("jpeg_photo_ycck.jpg"));
    let app14 = ycck.windows(2).position(|w| w == [0xFF, 0xEE]).unwrap();
    assert_eq!(&ycck[app14 + 4..app14 + 9], b"Adobe");
    assert_eq!(ycck[app14 + 15], 2, "YCCK fixture has Adobe transform 2");
    // Chroma subsampling of each component in the photo samples: 4:4:4, 4:2:2, 4:2:0.
    for (file, luma) in [("jpeg_photo_444.jpg", 0x11), ("jpeg_photo_422.jpg", 0x21), ("jpeg_photo_420.jpg", 0x22)] {
        let b = std::fs::read(formats_dir().join(file)).unwrap();
        let sof = b.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        assert_eq!((b[sof + 9], b[sof + 11], b[sof + 14]), (3, luma, 0x11), "{file}");
    }
    // Every one of them is held to exact equality with Pillow.
    assert!(jpegs.len() >= 30 && jpegs.iter().all(|s| s.max_abs_diff == 0));
}

#[test]
fn jpeg_with_trailing_garbage_still_decodes() {
    let mut bytes = std::fs::read(formats_dir().join("jpeg_rgb.jpg")).unwrap();
    bytes.extend_from_slice(b"trailing bytes some cameras and editors append");
    let img = decode_bytes(&bytes, &DecodeLimits::default()).unwrap();
    assert_eq!(img.dimensions(), (24, 16));
}

#[test]
fn headers_only_and_corrupt_bodies_never_panic() {
    // Each sample with its body overwritten by garbage at several places: any outcome but a
    // panic is acceptable (some formats cannot tell), and errors are one short line.
    for s in samples() {
        let bytes = std::fs::read(formats_dir().join(&s.file)).unwrap();
        for start in [8, 16, 32, bytes.len() / 3, bytes.len() / 2] {
            for pattern in [0x00u8, 0xFF, 0x5A] {
                let mut bad = bytes.clone();
                let end = (start + 24).min(bad.len());
                for b in &mut bad[start.min(end)..end] {
                    *b ^= pattern.wrapping_add(0x33);
                }
                if let Err(e) = decode_bytes(&bad, &DecodeLimits::default()) {
                    let msg = e.to_string();
                    assert!(!msg.contains('\n') && msg.len() < 300, "{}: {msg}", s.file);
                    assert!(!matches!(e, DecodeError::DecoderPanic(_)), "{}: decoder panicked: {msg}", s.file);
                }
            }
        }
        // Just the first bytes (magic number, partial header).
        for cut in [1, 2, 4, 8, 12, 16, 30] {
            if cut < bytes.len() {
                assert!(decode_bytes(&bytes[..cut], &DecodeLimits::default()).is_err(), "{} cut to {cut}", s.file);
            }
        }
    }
}

#[test]
fn non_images_are_unknown_or_unsupported() {
    let limits = DecodeLimits::default();
    assert!(matches!(decode_bytes(b"hello, this is a text file\n", &limits), Err(DecodeError::UnknownFormat)));
    assert!(matches!(decode_bytes(b"%PDF-1.7\n", &limits), Err(DecodeError::UnknownFormat)));
    assert!(matches!(decode_bytes(b"<?xml version=\"1.0\"?><html></html>", &limits), Err(DecodeError::UnknownFormat)));
    let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    assert!(matches!(decode_bytes(&noise, &limits), Err(DecodeError::UnknownFormat)));
    // Recognised, but not a format capmatch decodes (QOI, ICO): said so by name.
    match decode_bytes(b"qoif\x00\x00\x00\x01\x00\x00\x00\x01\x04\x00", &limits) {
        Err(DecodeError::UnsupportedFormat(name)) => assert_eq!(name, "QOI"),
        other => panic!("{other:?}"),
    }
    match decode_bytes(b"\x00\x00\x01\x00\x01\x00\x10\x10\x00\x00\x01\x00 \x00", &limits) {
        Err(e @ DecodeError::UnsupportedFormat(_)) => assert_eq!(e.to_string(), "ICO images are not supported"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_unreadable_and_non_files() {
    let dir = tempfile::tempdir().unwrap();
    let limits = DecodeLimits::default();
    // Missing.
    let missing = dir.path().join("missing.png");
    match decode_file(&missing, &limits) {
        Err(DecodeError::Io { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
    // A directory, even one named like an image.
    let sub = dir.path().join("folder.jpg");
    std::fs::create_dir(&sub).unwrap();
    match decode_file(&sub, &limits) {
        Err(e @ DecodeError::NotAFile { .. }) => assert!(e.to_string().ends_with("is a directory, not a file"), "{e}"),
        other => panic!("{other:?}"),
    }
    // A path through a regular file.
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(decode_file(&file.join("child.png"), &limits), Err(DecodeError::Io { .. })));
    // A FIFO would block a reader forever: refused without opening it.
    #[cfg(unix)]
    {
        let fifo = dir.path().join("pipe.png");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates the node.
        let made = unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) };
        assert_eq!(made, 0, "mkfifo {}: {}", fifo.display(), std::io::Error::last_os_error());
        match decode_file(&fifo, &limits) {
            Err(e @ DecodeError::NotAFile { kind: "a special file", .. }) => {
                assert!(e.to_string().ends_with("is a special file, not a file"), "{e}")
            }
            other => panic!("FIFO: {other:?}"),
        }
    }
    // No read permission. Root reads anything, so as root this thread's file-system uid is
    // dropped to `nobody` for the call: the open then fails as it would for any user.
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::PermissionsExt;
        // The folder must stay searchable for `nobody`, so that the open is what fails.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let locked = dir.path().join("locked.png");
        std::fs::copy(formats_dir().join("png_rgb.png"), &locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        let _unprivileged = std::fs::File::open(&locked).is_ok().then(UnprivilegedFs::enter);
        match decode_file(&locked, &limits) {
            Err(DecodeError::Io { path, source }) => {
                assert_eq!(path, locked);
                assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied, "{source}");
            }
            other => panic!("unreadable file: {other:?}"),
        }
    }
}

/// While alive, this thread's file-system uid is `nobody` (65534), without the file
/// capabilities root has: a test run as root then meets file permissions like any user.
/// Linux keeps credentials per thread and `setfsuid` changes only the calling thread's, so
/// the other tests running in parallel keep theirs. Fails loudly when the uid cannot be
/// dropped (no CAP_SETUID), rather than skipping the check.
#[cfg(target_os = "linux")]
struct UnprivilegedFs {
    previous: libc::uid_t,
}

#[cfg(target_os = "linux")]
impl UnprivilegedFs {
    const NOBODY: libc::uid_t = 65534;

    fn enter() -> Self {
        // SAFETY: setfsuid only changes this thread's credentials; an invalid uid (-1) changes
        // nothing and returns the current one.
        let (previous, now) = unsafe { (libc::setfsuid(Self::NOBODY), libc::setfsuid(libc::uid_t::MAX)) };
        assert_eq!(now as libc::uid_t, Self::NOBODY, "cannot drop the file-system uid to test a permission failure as root");
        Self { previous: previous as libc::uid_t }
    }
}

#[cfg(target_os = "linux")]
impl Drop for UnprivilegedFs {
    fn drop(&mut self) {
        // SAFETY: as above; back to the uid this thread had.
        unsafe { libc::setfsuid(self.previous) };
    }
}

fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend_from_slice(&13u32.to_be_bytes());
    let mut chunk = b"IHDR".to_vec();
    chunk.extend_from_slice(&ihdr);
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&crc32(&chunk).to_be_bytes());
    // The start of the pixel data (a real bomb has megabytes of it; the decoder needs to see
    // an IDAT chunk to finish reading the header).
    let mut idat = b"IDAT".to_vec();
    idat.extend_from_slice(&[0x78, 0x9C, 0x62, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF]);
    out.extend_from_slice(&((idat.len() - 4) as u32).to_be_bytes());
    out.extend_from_slice(&idat);
    out.extend_from_slice(&crc32(&idat).to_be_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// The JPEG fixture with its SOF0 patched to claim `width` x `height`.
fn jpeg_claiming(width: u16, height: u16) -> Vec<u8> {
    let mut bytes = std::fs::read(formats_dir().join("jpeg_rgb.jpg")).unwrap();
    let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    bytes[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    bytes
}

fn gif_header_only(width: u16, height: u16) -> Vec<u8> {
    let mut out = b"GIF89a".to_vec();
    out.extend_from_slice(&width.to_le_bytes());
    out.extend_from_slice(&height.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0]);
    out.extend_from_slice(&[0x2C, 0, 0, 0, 0]);
    out.extend_from_slice(&width.to_le_bytes());
    out.extend_from_slice(&height.to_le_bytes());
    out.extend_from_slice(&[0, 2, 0, 0x3B]);
    out
}

fn bmp_header_only(width: i32, height: i32) -> Vec<u8> {
    let mut out = b"BM".to_vec();
    out.extend_from_slice(&(54u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&54u32.to_le_bytes());
    out.extend_from_slice(&40u32.to_le_bytes());
    out.extend_from_slice(&width.to_le_bytes());
    out.extend_from_slice(&height.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&24u16.to_le_bytes());
    out.extend_from_slice(&[0; 24]);
    out
}

#[test]
fn bombs_are_refused_from_the_header_before_allocating() {
    let limits = DecodeLimits::default();
    let bombs: Vec<(&str, Vec<u8>, (u32, u32))> = vec![
        ("png", png_header_only(100_000, 100_000), (100_000, 100_000)),
        ("jpeg", jpeg_claiming(65_000, 65_000), (65_000, 65_000)),
        ("gif", gif_header_only(65_535, 65_535), (65_535, 65_535)),
        ("bmp", bmp_header_only(60_000, 60_000), (60_000, 60_000)),
    ];
    for (name, bytes, (w, h)) in bombs {
        match decode_bytes(&bytes, &limits) {
            Err(e @ DecodeError::TooLarge { .. }) => {
                let DecodeError::TooLarge { width, height, max_pixels } = e else { unreachable!() };
                assert_eq!((width, height, max_pixels), (w, h, limits.max_pixels), "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
        // Lifting the pixel limit leaves the allocation cap to refuse it.
        let lax = DecodeLimits { max_pixels: u64::MAX, max_alloc_bytes: 64 << 20, ..limits };
        match decode_bytes(&bytes, &lax) {
            Err(DecodeError::AllocLimit { max_alloc_bytes }) => assert_eq!(max_alloc_bytes, 64 << 20),
            other => panic!("{name} with the pixel limit lifted: {other:?}"),
        }
    }
    // No buffer anywhere near the claimed sizes (≥ 3 GB) was ever allocated; the largest
    // legitimate allocation in this test binary is an SVG raster (< 100 MB).
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(largest < 256 << 20, "largest allocation {largest} bytes");
}

#[test]
fn limits_are_configurable() {
    let path = formats_dir().join("png_rgb.png");
    let small = DecodeLimits::with_max_pixels(24 * 16 - 1);
    assert!(matches!(decode_file(&path, &small), Err(DecodeError::TooLarge { width: 24, height: 16, .. })));
    assert!(decode_file(&path, &DecodeLimits::with_max_pixels(24 * 16)).is_ok());
    let tight_alloc = DecodeLimits { max_alloc_bytes: 1000, ..Default::default() };
    assert!(matches!(decode_file(&path, &tight_alloc), Err(DecodeError::AllocLimit { max_alloc_bytes: 1000 })));
    let tight_file = DecodeLimits { max_file_bytes: 10, ..Default::default() };
    assert!(matches!(decode_file(&path, &tight_file), Err(DecodeError::FileTooLarge { max_bytes: 10, .. })));
}

#[test]
fn svg_is_rendered_at_its_intrinsic_size_over_white() {
    let svg = br##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20">
  <rect x="0" y="0" width="20" height="20" fill="#ff0000"/>
  <rect x="30" y="10" width="10" height="10" fill="#0000ff" fill-opacity="0.5"/>
</svg>"##;
    let img = decode_bytes(svg, &DecodeLimits::default()).unwrap();
    assert_eq!(img.dimensions(), (40, 20));
    assert_eq!(img.get_pixel(5, 5).0, [255, 0, 0]);
    assert_eq!(img.get_pixel(25, 5).0, [255, 255, 255]); // transparent -> white
    let half = img.get_pixel(35, 15).0; // 50 % blue over white
    assert!(half[2] == 255 && (126..=129).contains(&half[0]) && half[0] == half[1], "{half:?}");

    // Also from a file with the .svg extension, and recognised from content without it.
    let dir = tempfile::tempdir().unwrap();
    for name in ["drawing.svg", "drawing.bin"] {
        std::fs::write(dir.path().join(name), svg).unwrap();
        assert_eq!(decode_file(&dir.path().join(name), &DecodeLimits::default()).unwrap(), img);
    }
}

#[test]
fn huge_svg_is_capped_not_refused() {
    let svg = br##"<svg xmlns="http://www.w3.org/2000/svg" width="100000" height="50000" viewBox="0 0 2 1"><rect width="1" height="1" fill="#00ff00"/></svg>"##;
    let img = decode_bytes(svg, &DecodeLimits::default()).unwrap();
    assert_eq!(img.dimensions(), (SVG_MAX_SIDE, SVG_MAX_SIDE / 2));
    assert_eq!(img.get_pixel(10, 10).0, [0, 255, 0]);
    assert_eq!(img.get_pixel(SVG_MAX_SIDE - 10, 10).0, [255, 255, 255]);
    // And the pixel limit caps the area too.
    let img = decode_bytes(svg, &DecodeLimits::with_max_pixels(20_000)).unwrap();
    assert!(img.width() as u64 * img.height() as u64 <= 20_000 && img.width() >= 190, "{:?}", img.dimensions());
}

#[test]
fn broken_svg_is_corrupt() {
    for bad in [
        &b"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"10\"><rect"[..],
        b"<?xml version=\"1.0\"?><svg><g></svg>",
        b"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"0\" height=\"0\"></svg>",
    ] {
        match decode_bytes(bad, &DecodeLimits::default()) {
            Err(DecodeError::Corrupt(reason)) => assert!(!reason.contains('\n'), "{reason}"),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bad)),
        }
    }
}

#[test]
fn decoder_panics_become_errors() {
    let r: Result<(), _> = catch_decoder_panic(|| panic!("index out of bounds in some decoder"));
    match r {
        Err(e @ DecodeError::DecoderPanic(_)) => {
            assert_eq!(e.to_string(), "decoder crashed: index out of bounds in some decoder")
        }
        other => panic!("{other:?}"),
    }
    // The guard is transparent otherwise, and keeps working after a panic.
    assert_eq!(catch_decoder_panic(|| Ok(7)).unwrap(), 7);
    assert!(matches!(catch_decoder_panic::<()>(|| Err(DecodeError::Empty)), Err(DecodeError::Empty)));
}

#[test]
fn indexer_extension_list() {
    assert_eq!(
        SUPPORTED_EXTENSIONS,
        &["jpg", "jpeg", "jpe", "jfif", "png", "apng", "webp", "gif", "bmp", "dib", "tif", "tiff", "svg"]
    );
    for ext in SUPPORTED_EXTENSIONS {
        assert!(is_image_path(format!("dir/a.{ext}")));
        assert!(is_image_path(format!("dir/a.{}", ext.to_uppercase())));
    }
    assert!(!is_image_path("a.heic"));
    assert!(!is_image_path("a"));
    assert!(!is_image_path(".jpg/readme"));
}

/// A JPEG of a synthetic scene (gradients, hard edges, a fine stripe pattern) encoded with
/// libjpeg (through the mozjpeg crate), `width` x `height`, 4:2:0.
fn synthetic_jpeg(width: usize, height: usize) -> Vec<u8> {
    let mut pixels = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            let stripes = if (x / 3 + y / 5) % 2 == 0 { 40 } else { 0 };
            let disc = ((x as i64 - 400).pow(2) + (y as i64 - 300).pow(2)) < 200 * 200;
            pixels.push((x * 255 / width) as u8 / 2 + stripes);
            pixels.push(if disc { 220 } else { (y * 255 / height) as u8 / 2 });
            pixels.push(((x + y) % 256) as u8 / 2 + stripes);
        }
    }
    let mut compress = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
    compress.set_size(width, height);
    compress.set_quality(90.0);
    let mut started = compress.start_compress(Vec::new()).unwrap();
    started.write_scanlines(&pixels).unwrap();
    started.finish().unwrap()
}

fn reduced_for(target: ResizeTarget) -> DecodeOptions {
    DecodeOptions { reduced_scale: Some(ReducedScale::for_target(target)), ..Default::default() }
}

#[test]
fn reduced_scale_leaves_normal_size_images_exact() {
    // The fixtures are far smaller than any model input: full scale, Pillow's pixels.
    for target in [ResizeTarget::ShortestEdge(224), ResizeTarget::Exact { height: 384, width: 384 }] {
        for s in samples().iter().filter(|s| s.format == "JPEG") {
            let img = decode_file_with(&formats_dir().join(&s.file), &reduced_for(target)).unwrap();
            assert_eq!(img.as_raw(), &s.reference, "{}", s.file);
        }
    }
}

#[test]
fn reduced_scale_decodes_huge_jpegs_smaller_and_close_to_a_full_decode() {
    // 1344 x 1008 against a 40-pixel shortest edge: 1/8 leaves 126 rows, 3.15 times 40.
    let bytes = synthetic_jpeg(1344, 1008);
    let target = ResizeTarget::ShortestEdge(40);
    let full = decode_bytes(&bytes, &DecodeLimits::default()).unwrap();
    let reduced = decode_bytes_with(&bytes, &reduced_for(target)).unwrap();
    assert_eq!(full.dimensions(), (1344, 1008));
    assert_eq!(reduced.dimensions(), (168, 126));
    // The model input (resize + crop, in 8-bit values) barely moves.
    let processor = ImageProcessor {
        resize: Some(target),
        center_crop: Some((40, 40)),
        rescale_factor: None,
        normalize: None,
        ..ImageProcessor::clip_default()
    };
    let (a, b) = (processor.preprocess(&full).unwrap(), processor.preprocess(&reduced).unwrap());
    let max = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let mean = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    assert!(max <= 16.0 && mean <= 1.0, "max {max}, mean {mean}");
    assert!(max > 0.0, "a reduced decode is not expected to be exact");
    // Larger targets get larger scales: 1/4 for 80, 1/2 for 160, full size for 224.
    for (edge, size) in [(80, (336, 252)), (160, (672, 504)), (224, (1344, 1008))] {
        let img = decode_bytes_with(&bytes, &reduced_for(ResizeTarget::ShortestEdge(edge))).unwrap();
        assert_eq!(img.dimensions(), size, "shortest edge {edge}");
    }
    // The preprocessor says which reduction suits it.
    assert_eq!(ImageProcessor::clip_default().reduced_scale(), Some(ReducedScale::for_target(ResizeTarget::ShortestEdge(224))));
}

#[test]
fn reduced_scale_needs_sides_the_scale_divides() {
    // 1343 wide: no scale divides it, so a reduced decode is the full decode, exactly.
    let bytes = synthetic_jpeg(1343, 1008);
    let reduced = decode_bytes_with(&bytes, &reduced_for(ResizeTarget::ShortestEdge(40))).unwrap();
    assert_eq!(reduced, decode_bytes(&bytes, &DecodeLimits::default()).unwrap());
    // 1346 is even: 1/2.
    let bytes = synthetic_jpeg(1346, 1008);
    let reduced = decode_bytes_with(&bytes, &reduced_for(ResizeTarget::ShortestEdge(40))).unwrap();
    assert_eq!(reduced.dimensions(), (673, 504));
}

#[test]
fn reduced_scale_keeps_every_guard() {
    let bytes = synthetic_jpeg(1344, 1008);
    let options = reduced_for(ResizeTarget::ShortestEdge(40));
    // Cut files are still refused, at any scale.
    for cut in [bytes.len() / 2, bytes.len() - 2] {
        assert!(matches!(decode_bytes_with(&bytes[..cut], &options), Err(DecodeError::Corrupt(_))), "cut to {cut}");
    }
    // The pixel limit applies to the stored size, whatever the scale.
    let limited = DecodeOptions { limits: DecodeLimits::with_max_pixels(1344 * 1008 - 1), ..options };
    assert!(matches!(decode_bytes_with(&bytes, &limited), Err(DecodeError::TooLarge { width: 1344, height: 1008, .. })));
}
