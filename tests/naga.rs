//! Every shader in `shaders/`, parsed and validated by naga, then translated per entry
//! point, with each combination of the `override` values the runtime may use among the
//! overrides that entry point reaches, to SPIR-V
//! (Vulkan), MSL (Metal), HLSL (DX12) and GLSL (wgpu's GL backend), as wgpu would.
//! `spirv-val` and `glslangValidator` check the outputs when they are installed
//! (`.ci/setup` installs them; set `WGPU_EMBED_REQUIRE_VALIDATORS=1` to fail without them).
//!
//! Override values come from the shader itself, so new shaders and overrides are
//! covered without editing this file:
//! - a trailing comment on the declaration lists them: `override MODE: u32 = 0u; // values: 0, 1, 2`;
//! - otherwise the module's constants named `<NAME>_*` (or `<LAST WORD>_*`, e.g.
//!   `FORMAT_*` for `TABLE_FORMAT`) are taken as the values, plus the default;
//! - a `bool` override takes both values; anything else its default;
//! - `WG_SIZE` is the value the runtime always passes (64).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use naga::back::{glsl, hlsl, msl, spv};
use naga::proc::{BoundsCheckPolicies, BoundsCheckPolicy};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use naga::{AddressSpace, Expression, Literal, Module, ScalarKind, ShaderStage, TypeInner};

/// The value `Context::pipeline` gives `WG_SIZE` in every pipeline.
const RUNTIME_WG_SIZE: f64 = 64.0;
/// More override combinations than this per shader: vary one override at a time instead.
const MAX_COMBINATIONS: usize = 256;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every file of `shaders/` and `shaders/common/` is a part of some family the runtime
/// composes, and every family ends with its own file.
#[test]
fn every_shader_file_is_part_of_a_family() {
    let parts: Vec<&str> = wgpu_embed::SHADERS.iter().flat_map(|f| f.parts.iter().copied()).collect();
    let mut files = 0;
    for dir in ["shaders", "shaders/common"] {
        for entry in std::fs::read_dir(manifest_dir().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "wgsl") {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(parts.contains(&text.as_str()), "{} is not a part of any family in wgpu_embed::SHADERS", path.display());
                files += 1;
            }
        }
    }
    assert!(files > 8, "found only {files} shader files");
    for family in wgpu_embed::SHADERS {
        let own = std::fs::read_to_string(manifest_dir().join("shaders").join(format!("{}.wgsl", family.name))).unwrap();
        assert_eq!(family.parts.last(), Some(&own.as_str()), "family {} does not end with shaders/{}.wgsl", family.name, family.name);
    }
}

/// Override names the Rust sources pass to pipelines (`("NAME", value)` pairs) must be
/// declared by some shader: a misspelt name only fails at pipeline creation otherwise.
#[test]
fn overrides_set_by_the_runtime_exist_in_the_shaders() {
    let mut declared = BTreeSet::new();
    for family in wgpu_embed::SHADERS {
        let module = parse(family.name, &family.source());
        declared.extend(module.overrides.iter().filter_map(|(_, o)| o.name.clone()));
    }
    let mut used = BTreeMap::new();
    for path in rust_sources(&manifest_dir().join("src")) {
        let text = std::fs::read_to_string(&path).unwrap();
        // Unit tests at the end of a file pair constants' names with values too.
        let runtime = text.split("#[cfg(test)]").next().unwrap_or("");
        for name in override_pairs(runtime) {
            used.entry(name).or_insert(path.clone());
        }
    }
    assert!(used.contains_key("WG_SIZE"), "the scan found no override names in src/: {used:?}");
    for (name, path) in &used {
        assert!(declared.contains(name), "{} passes override {name}, which no shader declares", path.display());
    }
}

#[test]
fn every_shader_translates_to_every_backend() {
    let validators = Validators::find();
    let work = std::env::temp_dir().join(format!("wgpu-embed-naga-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let mut failures = Vec::new();
    let mut translated = 0;
    // Storage buffers per entry point: wgpu's downlevel limits (GLES 3.1's minimum) allow 4.
    let mut storage_counts = BTreeMap::new();
    for family in wgpu_embed::SHADERS {
        let (name, source) = (family.name, &family.source());
        let module = parse(name, source);
        let info = validate(name, source, &module);
        assert!(
            module.overrides.iter().any(|(_, o)| o.name.as_deref() == Some("WG_SIZE")),
            "{name}: the runtime passes WG_SIZE to every pipeline, so the shader must declare `override WG_SIZE: u32`"
        );
        for ep in module.entry_points.iter().filter(|ep| ep.stage == ShaderStage::Compute) {
            // Overrides an entry point does not reach give identical outputs: vary only
            // the ones it uses.
            let used = overrides_used_by(&module, &ep.name);
            for constants in &override_combinations(name, source, &module, &used) {
                let what = format!("{name} {} {:?}", ep.name, constants);
                match translate_all(&module, &info, &ep.name, constants, &validators, &work, (translated, &what)) {
                    Ok(storage) => {
                        translated += 1;
                        let most = storage_counts.entry(format!("{name} {}", ep.name)).or_insert(0);
                        *most = storage.max(*most);
                    }
                    Err(e) => failures.push(format!("{what}: {e}")),
                }
            }
        }
    }
    failures.extend(validators.check_glsl());
    let _ = std::fs::remove_dir_all(&work);
    let over: Vec<String> = storage_counts.iter().filter(|(_, &n)| n > 4).map(|(ep, n)| format!("{ep} ({n})")).collect();
    if !over.is_empty() {
        eprintln!(
            "note: entry points with more than 4 storage buffers (need max_storage_buffers_per_shader_stage > 4, \
                   which GLES 3.1's minimum and wgpu's downlevel limits do not give): {}",
            over.join(", ")
        );
    }
    eprintln!(
        "translated {translated} (entry point, overrides) pairs; validators: spirv-val {}, glslangValidator {}",
        validators.spirv_val, validators.glslang
    );
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    assert!(translated > 0);
}

/// Names of the overrides `entry` reaches, as naga's compaction finds them.
fn overrides_used_by(module: &Module, entry: &str) -> BTreeSet<String> {
    let mut module = module.clone();
    module.entry_points.retain(|ep| ep.name == entry);
    naga::compact::compact(&mut module, naga::compact::KeepUnused::No);
    module.overrides.iter().filter_map(|(_, o)| o.name.clone()).collect()
}

fn parse(name: &str, source: &str) -> Module {
    naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string_with_path(source, name)))
}

fn validate(name: &str, source: &str, module: &Module) -> ModuleInfo {
    // What wgpu grants a WebGPU-compliant device without optional features (see
    // wgpu-naga-bridge's `features_to_naga_capabilities`), plus f16 where the shader enables it.
    let mut caps = Capabilities::MULTISAMPLED_SHADING | Capabilities::CUBE_ARRAY_TEXTURES;
    if source.contains("enable f16") {
        caps |= Capabilities::SHADER_FLOAT16;
    }
    if Validator::new(ValidationFlags::all(), caps).validate(module).is_err() {
        // `unpack2x16float` and friends need DownlevelFlags::SHADER_F16_IN_F32, which most
        // devices have (llvmpipe's Vulkan driver only with SHADER_F16): a note, not a failure.
        eprintln!("note: {name} needs DownlevelFlags::SHADER_F16_IN_F32 (f16 packing built-ins)");
        caps |= Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    }
    Validator::new(ValidationFlags::all(), caps)
        .validate(module)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string_with_path(source, name)))
}

/// Value sets for the overrides named in `used`; `None` leaves an override at its default.
fn override_combinations(name: &str, source: &str, module: &Module, used: &BTreeSet<String>) -> Vec<BTreeMap<String, f64>> {
    let mut choices: Vec<(String, Vec<Option<f64>>)> = Vec::new();
    for (_, o) in module.overrides.iter() {
        let oname = o.name.clone().unwrap_or_else(|| panic!("{name}: an override without a name"));
        if !used.contains(&oname) {
            continue;
        }
        let mut values: Vec<Option<f64>> = Vec::new();
        if oname == "WG_SIZE" {
            values.push(Some(RUNTIME_WG_SIZE));
        } else if let Some(listed) = annotated_values(source, &oname) {
            values.extend(listed.into_iter().map(Some));
        } else {
            let is_bool = matches!(module.types[o.ty].inner, TypeInner::Scalar(s) if s.kind == ScalarKind::Bool);
            if is_bool {
                values.extend([Some(0.0), Some(1.0)]);
            } else {
                values.extend(prefixed_constants(module, &oname).into_iter().map(Some));
                // A number the runtime sets without saying which values: the test cannot
                // know what to cover, so it asks for the list.
                assert!(
                    !values.is_empty(),
                    "{name}: override {oname}: list the values the runtime passes on its declaration line, \
                     e.g. `override {oname}: u32 = 0u; // values: 0, 1, 2`"
                );
            }
            if o.init.is_some() {
                values.push(None);
            }
        }
        values.dedup();
        choices.push((oname, values));
    }
    let total: usize = choices.iter().map(|(_, v)| v.len()).product();
    let mut combos = Vec::new();
    if total <= MAX_COMBINATIONS {
        combos.push(BTreeMap::new());
        for (oname, values) in &choices {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        if let Some(v) = v {
                            c.insert(oname.clone(), *v);
                        }
                        c
                    })
                })
                .collect();
        }
    } else {
        // Too many to try all: each value of each override once, the others at their first value.
        let base: BTreeMap<String, f64> = choices.iter().filter_map(|(n, v)| v[0].map(|x| (n.clone(), x))).collect();
        for (oname, values) in &choices {
            for v in values {
                let mut c = base.clone();
                match v {
                    Some(v) => c.insert(oname.clone(), *v),
                    None => c.remove(oname),
                };
                combos.push(c);
            }
        }
    }
    combos
}

/// Values from a `// values: a, b, c` comment on the override's declaration line or
/// in the comment lines just above it.
fn annotated_values(source: &str, oname: &str) -> Option<Vec<f64>> {
    let lines: Vec<&str> = source.lines().collect();
    let at = lines.iter().position(|l| {
        l.trim_start()
            .strip_prefix("override")
            .is_some_and(|rest| rest.trim_start().strip_prefix(oname).is_some_and(|after| after.trim_start().starts_with([':', '=', ';'])))
    })?;
    let mut comments = vec![lines[at].split_once("//").map_or("", |(_, c)| c)];
    comments.extend(lines[..at].iter().rev().map_while(|l| l.trim_start().strip_prefix("//")));
    let list = comments.iter().find_map(|c| c.split_once("values:").map(|(_, list)| list))?;
    Some(
        list.split(',')
            .map(|v| {
                let v = v.trim().trim_end_matches(['u', 'i', 'f', '.']);
                match v {
                    "true" => 1.0,
                    "false" => 0.0,
                    _ => v.parse().unwrap_or_else(|_| panic!("override {oname}: cannot read value {v:?} in `values: {list}`")),
                }
            })
            .collect(),
    )
}

/// Scalar constants named `<NAME>_*` or `<LAST WORD OF NAME>_*`.
fn prefixed_constants(module: &Module, oname: &str) -> Vec<f64> {
    let mut prefixes = vec![format!("{oname}_")];
    if let Some((_, last)) = oname.rsplit_once('_') {
        prefixes.push(format!("{last}_"));
    }
    let mut values = Vec::new();
    for (_, c) in module.constants.iter() {
        let Some(cname) = &c.name else { continue };
        if !prefixes.iter().any(|p| cname.starts_with(p.as_str())) {
            continue;
        }
        if let Expression::Literal(lit) = module.global_expressions[c.init] {
            let v = match lit {
                Literal::U32(v) => v as f64,
                Literal::I32(v) => v as f64,
                Literal::F32(v) => v as f64,
                Literal::AbstractInt(v) => v as f64,
                Literal::AbstractFloat(v) => v,
                Literal::Bool(v) => v as u8 as f64,
                _ => continue,
            };
            if !values.contains(&v) {
                values.push(v);
            }
        }
    }
    values
}

/// Specialises `module` for `entry` with `constants` and writes it for every backend;
/// returns how many storage buffers the entry point binds.
fn translate_all(
    module: &Module,
    info: &ModuleInfo,
    entry: &str,
    constants: &BTreeMap<String, f64>,
    validators: &Validators,
    work: &Path,
    (serial, what): (usize, &str),
) -> Result<usize, String> {
    let constants: naga::back::PipelineConstants = constants.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let (module, info) = naga::back::pipeline_constants::process_overrides(module, info, Some((ShaderStage::Compute, entry)), &constants)
        .map_err(|e| format!("process_overrides: {e}"))?;
    let (module, info) = (&*module, &*info);

    // The WebGPU default limit; wgpu's downlevel (GLES 3.1 minimum) limit is 4.
    let storage = module.global_variables.iter().filter(|(_, g)| matches!(g.space, AddressSpace::Storage { .. })).count();
    if storage > 8 {
        return Err(format!("{storage} storage buffers; WebGPU guarantees 8 per stage"));
    }

    // SPIR-V as wgpu's Vulkan backend writes it (no robust buffer access assumed).
    let restrict = BoundsCheckPolicies {
        index: BoundsCheckPolicy::Restrict,
        buffer: BoundsCheckPolicy::Restrict,
        image_load: BoundsCheckPolicy::Restrict,
        binding_array: BoundsCheckPolicy::Unchecked,
    };
    for lang_version in [(1, 0), (1, 3)] {
        let options = spv::Options { lang_version, bounds_check_policies: restrict, ..Default::default() };
        let pipeline = spv::PipelineOptions { shader_stage: ShaderStage::Compute, entry_point: entry.to_string() };
        let words = spv::write_vec(module, info, &options, Some(&pipeline)).map_err(|e| format!("SPIR-V {lang_version:?}: {e}"))?;
        if validators.spirv_val && validators.first_time(bytemuck::cast_slice(&words)) {
            let env = if lang_version == (1, 0) { "vulkan1.0" } else { "vulkan1.1" };
            let path = work.join(format!("{serial}-{}{}.spv", lang_version.0, lang_version.1));
            std::fs::write(&path, bytemuck::cast_slice::<u32, u8>(&words)).unwrap();
            run_validator("spirv-val", &["--target-env", env, path.to_str().unwrap()])?;
        }
    }

    // MSL for Metal 2.1 (oldest macOS wgpu targets) and 3.0.
    for lang_version in [(2, 1), (3, 0)] {
        let options = msl::Options { lang_version, bounds_check_policies: restrict, ..Default::default() };
        let pipeline = msl::PipelineOptions { entry_point: Some((ShaderStage::Compute, entry.to_string())), ..Default::default() };
        msl::write_string(module, info, &options, &pipeline).map_err(|e| format!("MSL {lang_version:?}: {e}"))?;
    }

    // HLSL for FXC (5.1) and DXC (6.0).
    for shader_model in [hlsl::ShaderModel::V5_1, hlsl::ShaderModel::V6_0] {
        let options = hlsl::Options { shader_model, ..Default::default() };
        let pipeline = hlsl::PipelineOptions { entry_point: Some((ShaderStage::Compute, entry.to_string())) };
        let mut out = String::new();
        hlsl::Writer::new(&mut out, &options, &pipeline)
            .write(module, info, None)
            .map_err(|e| format!("HLSL {}: {e}", shader_model.to_str()))?;
    }

    // GLSL as wgpu's GL backend writes it: compute needs ES 3.1 or desktop 4.3; bindings
    // numbered per resource class, bounds checks left to GL.
    let mut binding_map = glsl::BindingMap::default();
    let (mut uniforms, mut storages) = (0u8, 0u8);
    for (_, g) in module.global_variables.iter() {
        let Some(br) = g.binding else { continue };
        let slot = match g.space {
            AddressSpace::Uniform => &mut uniforms,
            AddressSpace::Storage { .. } => &mut storages,
            _ => continue,
        };
        binding_map.insert(br, *slot);
        *slot += 1;
    }
    let unchecked = BoundsCheckPolicies {
        index: BoundsCheckPolicy::Unchecked,
        buffer: BoundsCheckPolicy::Unchecked,
        image_load: BoundsCheckPolicy::Unchecked,
        binding_array: BoundsCheckPolicy::Unchecked,
    };
    for version in [glsl::Version::new_gles(310), glsl::Version::Desktop(430)] {
        let options = glsl::Options { version, binding_map: binding_map.clone(), ..Default::default() };
        let pipeline = glsl::PipelineOptions { shader_stage: ShaderStage::Compute, entry_point: entry.to_string(), multiview: None };
        let mut out = String::new();
        glsl::Writer::new(&mut out, module, info, &options, &pipeline, unchecked)
            .and_then(|mut w| w.write())
            .map_err(|e| format!("GLSL {version}: {e}"))?;
        if validators.glslang && validators.first_time(out.as_bytes()) {
            let path = work.join(format!("{serial}-{}.comp", if version.is_es() { "es" } else { "core" }));
            std::fs::write(&path, &out).unwrap();
            validators.glsl_files.borrow_mut().push((path, format!("{what} GLSL {version}")));
        }
    }
    Ok(storage)
}

struct Validators {
    spirv_val: bool,
    glslang: bool,
    /// Hashes of outputs already checked: an override left at its default and set to
    /// that same value give identical outputs, which need no second run of the validator.
    seen: std::cell::RefCell<std::collections::HashSet<u64>>,
    /// GLSL outputs waiting for `check_glsl`, with what they were made from: one
    /// glslangValidator run checks many files (its start-up, ~0.1 s, dominated the test).
    glsl_files: std::cell::RefCell<Vec<(PathBuf, String)>>,
}

impl Validators {
    fn find() -> Self {
        let found = |tool: &str, arg: &str| Command::new(tool).arg(arg).output().is_ok_and(|o| o.status.success());
        let v = Validators {
            spirv_val: found("spirv-val", "--version"),
            glslang: found("glslangValidator", "--version"),
            seen: Default::default(),
            glsl_files: Default::default(),
        };
        if std::env::var_os("WGPU_EMBED_REQUIRE_VALIDATORS").is_some_and(|x| x == "1") {
            assert!(v.spirv_val && v.glslang, "spirv-val and glslangValidator are required (apt install spirv-tools glslang-tools)");
        }
        v
    }
}

impl Validators {
    /// Runs glslangValidator over the waiting GLSL files, many to a run (it compiles each
    /// file on its own); a failing run is retried file by file to name the failures.
    fn check_glsl(&self) -> Vec<String> {
        let files = std::mem::take(&mut *self.glsl_files.borrow_mut());
        let mut failures = Vec::new();
        for chunk in files.chunks(128) {
            let paths: Vec<&str> = chunk.iter().map(|(p, _)| p.to_str().unwrap()).collect();
            if run_validator("glslangValidator", &paths).is_ok() {
                continue;
            }
            for ((_, what), path) in chunk.iter().zip(&paths) {
                if let Err(e) = run_validator("glslangValidator", &[path]) {
                    failures.push(format!("{what}: {e}"));
                }
            }
        }
        failures
    }

    fn first_time(&self, output: &[u8]) -> bool {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        output.hash(&mut h);
        self.seen.borrow_mut().insert(h.finish())
    }
}

fn run_validator(tool: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(tool).args(args).output().map_err(|e| format!("{tool}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{tool} {}: {}{}", args.join(" "), String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

fn rust_sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// Names in `("UPPER_CASE", …)` pairs: how kernels pass override values.
fn override_pairs(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("(\"") {
        rest = &rest[at + 2..];
        let Some(end) = rest.find('"') else { break };
        let name = &rest[..end];
        let is_name = name.len() >= 2
            && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            && name.chars().next().is_some_and(|c| c.is_ascii_uppercase());
        if is_name && rest[end + 1..].trim_start().starts_with(',') {
            names.push(name.to_string());
        }
    }
    names
}
