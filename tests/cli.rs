//! The `genfleet` commands other than `worker`, run as a user would: the
//! README's batch command, `validate` on jobs and uploads, `enqueue` against a
//! real broker, and `credits` against the real database.

mod support;

use std::process::{Command, Output};

use support::*;

fn genfleet(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_genfleet"));
    command
        .args(args)
        .env_remove("GENFLEET_CONFIG")
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("genfleet runs")
}

/// `genfleet batch <input> --out <out> <extra...>`, which must succeed.
fn batch(input: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> Output {
    let (input, out) = (input.display().to_string(), out.display().to_string());
    let mut args = vec!["batch", input.as_str(), "--out", out.as_str()];
    args.extend_from_slice(extra);
    let output = genfleet(&args, &[]);
    assert!(
        output.status.success(),
        "{}\n{}",
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

#[test]
fn batch_converts_the_examples_and_reports_rejections() {
    let out = TempDir::new("genfleet-cli-batch");
    let examples = repo_path("examples/photos");
    let output = batch(&examples, &out.0, &["--long-side", "512"]);
    let text = stdout(&output);
    assert!(
        text.contains("6 file(s): 5 converted, 1 rejected"),
        "{text}"
    );
    assert!(
        text.contains("not_an_image.svg") && text.contains("unsupported_type"),
        "{text}"
    );
    // Orientation was applied when the example was made; the portrait stays portrait.
    let dogs = std::fs::read(out.0.join("dogs_portrait_1024.jpg")).unwrap();
    let image = genfleet_imaging::decode_sanitised(&dogs, &Default::default()).unwrap();
    assert_eq!((image.image.width(), image.image.height()), (342, 512));
    // The WebP with alpha became a JPEG (flattened) inside the long side.
    let strawberry = std::fs::read(out.0.join("strawberry_alpha.jpg")).unwrap();
    let info = genfleet_imaging::inspect(&strawberry, &Default::default()).unwrap();
    assert_eq!(info.width.max(info.height), 512);
    assert!(
        !out.0.join("not_an_image.jpg").exists(),
        "nothing is written for a rejected file"
    );
}

/// Real photos with EXIF (orientation, GPS), XMP, IPTC and ICC profiles go
/// through `genfleet batch`; the outputs are read back as files: upright,
/// and with no metadata of any kind left.
#[test]
fn batch_outputs_are_upright_and_carry_no_metadata() {
    use image::ImageDecoder as _;
    let input = repo_path("tests/fixtures/corpus/photos");
    let out = TempDir::new("genfleet-cli-metadata");
    batch(&input, &out.0, &["--long-side", "800"]);
    // (file, displayed width x height at a long side of 800)
    let cases = [
        ("p01_foliage_sky_1000x750.jpg", (800, 600)),
        ("p07_forest_stream_adobergb_1000x667.jpg", (800, 534)),
        ("p08_dogs_portrait_orient6_1000x667.jpg", (534, 800)),
        ("p09_interior_still_life_orient8_1000x750.jpg", (600, 800)),
        ("p10_fig_plate_orient3_1000x677.jpg", (800, 542)),
        ("p12_boats_dusk_srgb_icc_1000x625.jpg", (800, 500)),
    ];
    for (name, size) in cases {
        let source = std::fs::read(input.join(name)).unwrap();
        // The inputs really carry what must go: an EXIF block with a GPS
        // IFD (tag 0x8825, in either byte order).
        let exif = image::ImageReader::new(std::io::Cursor::new(&source))
            .with_guessed_format()
            .unwrap()
            .into_decoder()
            .unwrap()
            .exif_metadata()
            .unwrap()
            .unwrap_or_else(|| panic!("{name} has no EXIF"));
        assert!(
            contains(&exif, &[0x88, 0x25]) || contains(&exif, &[0x25, 0x88]),
            "{name}: no GPS IFD in the input"
        );
        let bytes = std::fs::read(out.0.join(name)).unwrap();
        let mut decoder = image::ImageReader::new(std::io::Cursor::new(&bytes))
            .with_guessed_format()
            .unwrap()
            .into_decoder()
            .unwrap();
        assert_eq!(decoder.dimensions(), size, "{name}");
        assert_eq!(decoder.exif_metadata().unwrap(), None, "{name}: EXIF left");
        assert_eq!(decoder.icc_profile().unwrap(), None, "{name}: ICC left");
        assert_eq!(
            decoder.orientation().unwrap(),
            image::metadata::Orientation::NoTransforms,
            "{name}"
        );
        for needle in [
            b"Exif".as_slice(),
            b"GPS",
            b"http://ns.adobe.com/xap",
            b"Photoshop 3.0",
            b"ICC_PROFILE",
            b"Artist",
        ] {
            assert!(
                !contains(&bytes, needle),
                "{name}: output still holds {:?}",
                String::from_utf8_lossy(needle)
            );
        }
    }
}

/// A marketplace preset from the command line, and a user preset file.
#[test]
fn batch_renders_presets_including_user_ones() {
    let input = repo_path("tests/fixtures/composites");
    let out = TempDir::new("genfleet-cli-presets");
    batch(&input, &out.0, &["--preset", "amazon-main"]);
    let amazon = std::fs::read(out.0.join("k01_tshirt_white.jpg")).unwrap();
    let image = image::load_from_memory(&amazon).unwrap().to_rgb8();
    assert_eq!(image.dimensions(), (2000, 2000));
    assert_eq!(image.get_pixel(0, 0).0, [255, 255, 255]);

    let presets = out.0.join("mine.toml");
    std::fs::write(&presets, "[tiny]\nlong_side = 64\nformat = \"png\"\n").unwrap();
    let tiny_out = out.0.join("tiny");
    batch(
        &input,
        &tiny_out,
        &[
            "--preset",
            "tiny",
            "--presets",
            &presets.display().to_string(),
        ],
    );
    let png = std::fs::read(tiny_out.join("k01_tshirt_white.png")).unwrap();
    let info = genfleet_imaging::inspect(&png, &Default::default()).unwrap();
    assert_eq!((info.width, info.height), (64, 64));

    let output = genfleet(
        &[
            "batch",
            &input.display().to_string(),
            "--out",
            &tiny_out.display().to_string(),
            "--preset",
            "poster",
        ],
        &[],
    );
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("unknown preset \"poster\"") && err.contains("amazon-main"),
        "{err}"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn validate_says_what_a_worker_would_decide() {
    let cases: &[(&str, bool, &str)] = &[
        (
            "proto/examples/job_virtual_try_on.json",
            true,
            "valid job 01JD3XQ6Z8M5V9K2T4W7Y1B0A5 (virtual_try_on), queue genfleet.jobs.remote",
        ),
        (
            "proto/examples/job_upscale.json",
            true,
            "queue genfleet.jobs.cpu",
        ),
        (
            "proto/examples/invalid/unspecified_kind.json",
            false,
            "invalid_input: missing required field `kind`",
        ),
        (
            "examples/photos/fig_plate_1024.jpg",
            true,
            "accepted jpeg image",
        ),
        (
            "tests/fixtures/hostile/h02_bomb_60000x60000.png",
            false,
            "too_large: image is 60000x60000 pixels",
        ),
        (
            "tests/fixtures/hostile/h09_html_named_jpg.jpg",
            false,
            "unsupported_type: unsupported image type: found html",
        ),
        (
            "tests/fixtures/hostile/h01_truncated.jpg",
            false,
            "invalid_input",
        ),
    ];
    for (file, accepted, expected) in cases {
        let output = genfleet(&["validate", &repo_path(file).display().to_string()], &[]);
        let text = stdout(&output);
        assert_eq!(output.status.success(), *accepted, "{file}: {text}");
        assert!(
            text.contains(expected),
            "{file}: expected {expected:?} in {text:?}"
        );
    }
}

#[test]
fn enqueue_publishes_confirmed_jobs_to_their_class() {
    let vhost = Vhost::create();
    let url = vhost.url();
    let env = [("GENFLEET__BROKER__URL", url.as_str())];
    let file = repo_path("proto/examples/job_upscale.json")
        .display()
        .to_string();
    let output = genfleet(&["enqueue", &file], &env);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout(&output).contains("01JD3XQ6Z8M5V9K2T4W7Y1B0A3 -> genfleet.jobs.cpu"));

    let output = genfleet(
        &[
            "enqueue",
            "--generate",
            "3",
            "--kind",
            "product_photo",
            "--credits",
            "2",
        ],
        &env,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout(&output)
            .lines()
            .filter(|l| l.ends_with("genfleet.jobs.remote"))
            .count(),
        3
    );

    // Priority picks the lane.
    let output = genfleet(
        &[
            "enqueue",
            "--generate",
            "2",
            "--kind",
            "upscale",
            "--priority",
            "high",
        ],
        &env,
    );
    assert!(output.status.success());
    assert_eq!(
        stdout(&output)
            .lines()
            .filter(|l| l.ends_with("genfleet.jobs.cpu.high"))
            .count(),
        2
    );
    let output = genfleet(
        &["enqueue", "--generate", "1", "--priority", "urgent"],
        &env,
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--priority \"urgent\""));

    // A broken job file is refused before anything is published.
    let broken = repo_path("proto/examples/invalid/no_inputs.json")
        .display()
        .to_string();
    let output = genfleet(&["enqueue", &broken], &env);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("`inputs`"));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let broker = genfleet_broker::Broker::connect(&url, "cli-test")
            .await
            .unwrap();
        assert_eq!(broker.queue_depth("genfleet.jobs.cpu").await.unwrap(), 1);
        assert_eq!(broker.queue_depth("genfleet.jobs.remote").await.unwrap(), 3);
        assert_eq!(
            broker.queue_depth("genfleet.jobs.cpu.high").await.unwrap(),
            2
        );
        broker.close().await;
    });
}

#[test]
fn credits_grant_and_balance() {
    let schema = Schema::new();
    let env = [("GENFLEET__DATABASE__SCHEMA", schema.name.as_str())];
    let output = genfleet(&["credits", "grant", "acme/shop-1", "250"], &env);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout(&output).contains("acme/shop-1: granted 250, 250 available"));
    let output = genfleet(&["credits", "balance", "acme/shop-1"], &env);
    assert!(stdout(&output).contains("250 available, 0 held, 0 captured"));
    let output = genfleet(&["credits", "balance", "nobody/here"], &env);
    assert!(!output.status.success());
    assert_eq!(stdout(&output), "nobody/here: no such account\n");
    // `-5` reads as an option, which the parser refuses; after `--` it is
    // the amount, which the ledger refuses.
    let output = genfleet(&["credits", "grant", "acme/shop-1", "-5"], &env);
    assert!(!output.status.success(), "negative grants are refused");
    assert!(
        stderr(&output).contains("unexpected argument '-5'"),
        "{}",
        stderr(&output)
    );
    let output = genfleet(&["credits", "grant", "acme/shop-1", "--", "-5"], &env);
    assert!(!output.status.success(), "negative grants are refused");
    assert!(
        stderr(&output).contains("grant amount is -5, expected a positive number of credits"),
        "{}",
        stderr(&output)
    );
    let output = genfleet(&["credits", "statement", "acme/shop-1"], &env);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("grant") && text.contains("250") && text.contains("operator grant"),
        "{text}"
    );
    let output = genfleet(&["credits", "holds", "acme/shop-1", "--all"], &env);
    assert!(output.status.success());
    assert_eq!(stdout(&output), "", "no holds yet");

    // The workspace draws on its organisation's credits within a cap.
    let output = genfleet(
        &["credits", "link", "acme/shop-1", "--parent", "acme"],
        &env,
    );
    assert!(!output.status.success(), "the parent must exist");
    assert!(
        stderr(&output).contains("parent account acme does not exist"),
        "{}",
        stderr(&output)
    );
    let output = genfleet(&["credits", "grant", "acme", "1000"], &env);
    assert!(output.status.success());
    let output = genfleet(
        &[
            "credits",
            "link",
            "acme/shop-1",
            "--parent",
            "acme",
            "--cap",
            "100",
        ],
        &env,
    );
    let text = stdout(&output);
    assert!(
        output.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("acme/shop-1: linked to acme"), "{text}");
    let output = genfleet(&["credits", "balance", "acme/shop-1"], &env);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    // Own 250 plus min(acme's 1000, cap 100).
    for line in [
        "acme/shop-1: 250 available, 0 held, 0 captured",
        "  parent:    acme",
        "  cap:       100",
        "  drawn:     0",
        "  spendable: 350",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in {text}");
    }
    let output = genfleet(&["credits", "balance", "acme"], &env);
    let text = stdout(&output);
    assert_eq!(text, "acme: 1000 available, 0 held, 0 captured\n");
    // One level only, and caps are not negative.
    let output = genfleet(
        &["credits", "link", "acme", "--parent", "acme/shop-1"],
        &env,
    );
    assert!(!output.status.success(), "a parent cannot get a parent");
    assert!(
        stderr(&output).contains("cannot be a parent (one level only)"),
        "{}",
        stderr(&output)
    );
    let output = genfleet(
        &[
            "credits",
            "link",
            "acme/shop-1",
            "--parent",
            "acme",
            "--cap=-1",
        ],
        &env,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("parent cap is -1"),
        "negative caps are refused: {stderr}"
    );
    // Linking again without --cap lifts the limit.
    let output = genfleet(
        &["credits", "link", "acme/shop-1", "--parent", "acme"],
        &env,
    );
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("  cap:       none") && text.contains("  spendable: 1250"),
        "{text}"
    );
}
