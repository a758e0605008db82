// kiln's C runtime: load a library made by `kiln compile` and run it with TVM's C++ runtime.
//
// The interface is kiln_runtime.h; docs/c-api.md shows deploying it. Only the tvm-ffi C++ API is
// used (headers from the apache-tvm-ffi wheel), so the library needs libtvm_ffi.so and
// libtvm_runtime.so (+ libtvm_runtime_extra.so), linked with --no-as-needed: nothing here calls
// into libtvm_runtime directly, but loading it registers the .so module loader and the Relax VM.
//
// kiln_load makes the checks of compiler/runtime.py (load, check_runnable_here) in the same
// order, before TVM opens the file: seal, ELF section .kiln_metadata, metadata JSON, TVM version,
// architecture, CPU features, device. kiln_run validates inputs as CompiledModel._ordered_arrays
// and TensorSpec.mismatch (targets/library_format.py) do, with the same messages.
//
// Build: targets/c_api/Makefile defines KILN_TVM_VERSION (the apache-tvm version of the runtime
// it links, which a library's metadata must name).
#include "kiln_runtime.h"

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(__aarch64__)
#include <sys/auxv.h>
#endif

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#ifndef KILN_TVM_VERSION
#error "define KILN_TVM_VERSION: the apache-tvm version of the runtime linked (targets/c_api/Makefile does)"
#endif

namespace ffi = tvm::ffi;

namespace {

// ---------------------------------------------------------------------------------------------
// Errors: every internal failure is a Failure, turned into a status and kiln_last_error() at the
// API boundary.

struct Failure {
  kiln_status status;
  std::string message;
};

thread_local std::string t_last_error;

[[noreturn]] void Fail(kiln_status status, std::string message) { throw Failure{status, std::move(message)}; }

kiln_status Report(kiln_status status, const std::string& message) {
  t_last_error = message;
  return status;
}

std::string TvmMessage(const ffi::Error& err) {
  std::string msg = err.message();
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  return err.kind() + ": " + msg;
}

// Runs `body`, turning every exception into a status and a message.
template <typename Body>
kiln_status Guard(kiln_status tvm_status, Body&& body) {
  try {
    body();
    return KILN_OK;
  } catch (const Failure& f) {
    return Report(f.status, f.message);
  } catch (const ffi::Error& err) {
    return Report(tvm_status, TvmMessage(err));
  } catch (const std::bad_alloc&) {
    return Report(KILN_E_RUNTIME, "out of memory");
  } catch (const std::exception& err) {
    return Report(tvm_status, err.what());
  } catch (...) {
    return Report(tvm_status, "unknown C++ exception");
  }
}

// ---------------------------------------------------------------------------------------------
// SHA-256 (FIPS 180-4) for the seal. A few dozen lines here rather than OpenSSL: a board that runs
// the model then needs nothing beyond the TVM runtime and the C++ standard library.

class Sha256 {
 public:
  Sha256() : state_{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19} {}

  void Update(const uint8_t* data, size_t n) {
    total_ += n;
    if (fill_) {
      size_t take = std::min(n, sizeof(buf_) - fill_);
      std::memcpy(buf_ + fill_, data, take);
      fill_ += take, data += take, n -= take;
      if (fill_ < sizeof(buf_)) return;
      Block(buf_);
      fill_ = 0;
    }
    for (; n >= 64; data += 64, n -= 64) Block(data);
    std::memcpy(buf_, data, n);
    fill_ = n;
  }

  void Final(uint8_t out[32]) {
    uint64_t bits = total_ * 8;
    uint8_t pad[72] = {0x80};
    size_t pad_len = (fill_ < 56 ? 56 : 120) - fill_;
    for (int i = 0; i < 8; ++i) pad[pad_len + i] = static_cast<uint8_t>(bits >> (56 - 8 * i));
    Update(pad, pad_len + 8);
    for (int i = 0; i < 8; ++i)
      for (int j = 0; j < 4; ++j) out[4 * i + j] = static_cast<uint8_t>(state_[i] >> (24 - 8 * j));
  }

 private:
  static uint32_t Rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

  void Block(const uint8_t* p) {
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = uint32_t(p[4 * i]) << 24 | uint32_t(p[4 * i + 1]) << 16 | uint32_t(p[4 * i + 2]) << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = Rotr(w[i - 15], 7) ^ Rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = Rotr(w[i - 2], 17) ^ Rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = state_[0], b = state_[1], c = state_[2], d = state_[3];
    uint32_t e = state_[4], f = state_[5], g = state_[6], h = state_[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t t1 = h + (Rotr(e, 6) ^ Rotr(e, 11) ^ Rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      uint32_t t2 = (Rotr(a, 2) ^ Rotr(a, 13) ^ Rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    state_[0] += a, state_[1] += b, state_[2] += c, state_[3] += d;
    state_[4] += e, state_[5] += f, state_[6] += g, state_[7] += h;
  }

  uint32_t state_[8];
  uint8_t buf_[64] = {};
  size_t fill_ = 0;
  uint64_t total_ = 0;
};

// ---------------------------------------------------------------------------------------------
// The file: read, seal, ELF section (targets/library_format.py: verify_library, _elf_section).

const char kSealMagic[] = "KILNSEAL";
const size_t kSealMagicSize = 8;
const size_t kSealSize = kSealMagicSize + 32;
const uint16_t kEmX86_64 = 62, kEmAarch64 = 183;

// Which file a path named when it was read: a file rebuilt or replaced at the same path differs.
struct FileIdentity {
  uint64_t dev = 0, ino = 0, size = 0;
  int64_t mtime_s = 0, mtime_ns = 0;
  bool operator==(const FileIdentity& o) const {
    return dev == o.dev && ino == o.ino && size == o.size && mtime_s == o.mtime_s && mtime_ns == o.mtime_ns;
  }
};

std::vector<uint8_t> ReadFile(const std::string& path, FileIdentity* identity) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    int err = errno;
    Fail(KILN_E_IO, path + ": " + (err == ENOENT ? std::string("no such library file") : std::strerror(err)));
  }
  struct stat st;
  if (fstat(fileno(f), &st) == 0)
    *identity = FileIdentity{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
                             static_cast<uint64_t>(st.st_size), static_cast<int64_t>(st.st_mtim.tv_sec),
                             static_cast<int64_t>(st.st_mtim.tv_nsec)};
  std::vector<uint8_t> data;
  uint8_t chunk[1 << 16];
  size_t got;
  while ((got = std::fread(chunk, 1, sizeof(chunk), f)) > 0) data.insert(data.end(), chunk, chunk + got);
  bool failed = std::ferror(f) != 0;
  int err = errno;
  std::fclose(f);
  if (failed) Fail(KILN_E_IO, path + ": cannot read: " + std::strerror(err));
  return data;
}

void VerifySeal(const std::string& path, const std::vector<uint8_t>& data) {
  if (data.size() <= kSealSize || std::memcmp(data.data() + data.size() - kSealSize, kSealMagic, kSealMagicSize) != 0)
    Fail(KILN_E_LIBRARY, path + ": the library has no kiln seal: it was modified after compilation (e.g. stripped "
                               "or truncated) or not made by this kiln; recompile it");
  Sha256 sha;
  sha.Update(data.data(), data.size() - kSealSize);
  uint8_t digest[32];
  sha.Final(digest);
  if (std::memcmp(digest, data.data() + data.size() - 32, 32) != 0)
    Fail(KILN_E_LIBRARY, path + ": the library was modified after compilation (its sha256 no longer matches the "
                               "seal kiln wrote); recompile it");
}

uint64_t Le(const std::vector<uint8_t>& d, uint64_t at, int bytes) {
  if (at > d.size() || d.size() - at < static_cast<uint64_t>(bytes)) throw std::out_of_range("past the end");
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = v << 8 | d[at + i];
  return v;
}

uint16_t ElfMachine(const std::vector<uint8_t>& data) { return static_cast<uint16_t>(Le(data, 0x12, 2)); }

// The bytes of section `wanted` up to its first NUL, or nullopt when the library has none.
std::optional<std::string> ElfSection(const std::string& path, const std::vector<uint8_t>& data, const char* wanted) {
  if (data[4] != 2 || data[5] != 1)
    Fail(KILN_E_LIBRARY, path + ": only 64-bit little-endian libraries are supported");
  try {
    uint64_t shoff = Le(data, 0x28, 8), shentsize = Le(data, 0x3A, 2), shnum = Le(data, 0x3C, 2),
             shstrndx = Le(data, 0x3E, 2);
    if (shoff == 0 || shentsize < 0x28 || shstrndx >= shnum || shoff > data.size() ||
        (data.size() - shoff) / shentsize < shnum)
      Fail(KILN_E_LIBRARY, path + ": the library's section table is damaged or truncated; recompile it");
    auto section = [&](uint64_t i, uint64_t* name, uint64_t* offset, uint64_t* size) {
      uint64_t base = shoff + i * shentsize;
      *name = Le(data, base, 4), *offset = Le(data, base + 0x18, 8), *size = Le(data, base + 0x20, 8);
      if (*offset > data.size() || *size > data.size() - *offset) throw std::out_of_range("section past the end");
    };
    uint64_t unused, str_off, str_size;
    section(shstrndx, &unused, &str_off, &str_size);
    size_t wanted_len = std::strlen(wanted);
    for (uint64_t i = 0; i < shnum; ++i) {
      uint64_t name, offset, size;
      section(i, &name, &offset, &size);
      if (name + wanted_len + 1 > str_size) continue;
      const char* at = reinterpret_cast<const char*>(data.data() + str_off + name);
      if (std::memcmp(at, wanted, wanted_len + 1) != 0) continue;
      const char* begin = reinterpret_cast<const char*>(data.data() + offset);
      return std::string(begin, strnlen(begin, size));
    }
    return std::nullopt;
  } catch (const std::out_of_range& err) {
    Fail(KILN_E_LIBRARY, path + ": the library's ELF headers are damaged (" + err.what() + "); recompile it");
  }
}

// ---------------------------------------------------------------------------------------------
// Metadata (targets/library_format.py: LibraryMetadata, TensorSpec).

struct DtypeInfo {
  kiln_dtype dtype;
  const char* name;
  size_t size;
};
const DtypeInfo kDtypes[] = {
    {KILN_FLOAT32, "float32", 4}, {KILN_FLOAT16, "float16", 2}, {KILN_BFLOAT16, "bfloat16", 2},
    {KILN_FLOAT64, "float64", 8}, {KILN_INT8, "int8", 1},       {KILN_INT16, "int16", 2},
    {KILN_INT32, "int32", 4},     {KILN_INT64, "int64", 8},     {KILN_UINT8, "uint8", 1},
    {KILN_UINT16, "uint16", 2},   {KILN_UINT32, "uint32", 4},   {KILN_UINT64, "uint64", 8},
    {KILN_BOOL, "bool", 1}};

const DtypeInfo* ByDtype(kiln_dtype d) {
  for (const DtypeInfo& info : kDtypes)
    if (info.dtype == d) return &info;
  return nullptr;
}

kiln_dtype ByName(const std::string& name) {
  for (const DtypeInfo& info : kDtypes)
    if (name == info.name) return info.dtype;
  return KILN_DTYPE_UNKNOWN;
}

struct Spec {
  std::string name, dtype_name;
  kiln_dtype dtype = KILN_DTYPE_UNKNOWN;
  std::vector<int64_t> shape, low, high;  // low/high: accepted sizes per axis (see kiln_tensor_spec)
  std::vector<bool> ranged;               // axis has a (low, high) range

  std::string Dim(size_t axis) const {
    if (ranged[axis])
      return "(" + std::to_string(low[axis]) + ".." + (high[axis] >= 0 ? std::to_string(high[axis]) : "") + ")";
    return shape[axis] < 0 ? "?" : std::to_string(shape[axis]);
  }
  std::string Dims() const {
    std::string out;
    for (size_t i = 0; i < shape.size(); ++i) out += (i ? "x" : "") + Dim(i);
    return out;
  }
  std::string Describe() const { return name + ": " + dtype_name + "[" + Dims() + "]"; }

  // TensorSpec.mismatch: why `dims` does not fit (empty when it does).
  std::string Mismatch(const int64_t* dims, int32_t ndim) const {
    if (static_cast<size_t>(ndim) != shape.size())
      return "rank " + std::to_string(ndim) + ", expected rank " + std::to_string(shape.size());
    for (size_t axis = 0; axis < shape.size(); ++axis) {
      int64_t got = dims[axis];
      if (got < 0) return "axis " + std::to_string(axis) + " is " + std::to_string(got) + " (negative)";
      if (ranged[axis]) {
        if (got < low[axis] || (high[axis] >= 0 && got > high[axis]))
          return "axis " + std::to_string(axis) + " is " + std::to_string(got) + "; this library accepts " +
                 std::to_string(low[axis]) + ".." + (high[axis] >= 0 ? std::to_string(high[axis]) : "") + " there";
      } else if (got != shape[axis]) {
        return "axis " + std::to_string(axis) + " is " + std::to_string(got) + ", expected " +
               std::to_string(shape[axis]);
      }
    }
    return "";
  }
};

struct Metadata {
  std::string json, target_name, device, tvm_version, cpu_arch;
  std::vector<Spec> inputs, outputs;
  std::vector<std::string> cpu_features;
  bool has_cpu_features = false;
};

struct BadMetadata {
  std::string what;
};

std::optional<ffi::Any> Field(const ffi::json::Object& obj, const char* key) {
  auto it = obj.find(ffi::Any(ffi::String(key)));
  if (it == obj.end()) return std::nullopt;
  return (*it).second;
}

template <typename T>
T Need(const ffi::json::Object& obj, const char* key) {
  std::optional<ffi::Any> value = Field(obj, key);
  if (!value) throw BadMetadata{std::string("no '") + key + "'"};
  std::optional<T> typed = value->try_cast<T>();
  if (!typed) throw BadMetadata{std::string("'") + key + "' has the wrong type"};
  return *typed;
}

template <typename T>
T Item(const ffi::json::Array& arr, size_t i) {
  std::optional<T> typed = arr[i].try_cast<T>();
  if (!typed) throw BadMetadata{"a list item has the wrong type"};
  return *typed;
}

Spec ParseSpec(const ffi::Any& value) {
  std::optional<ffi::json::Object> obj = value.try_cast<ffi::json::Object>();
  if (!obj) throw BadMetadata{"a tensor spec is not an object"};
  Spec spec;
  spec.name = Need<ffi::String>(*obj, "name");
  spec.dtype_name = Need<ffi::String>(*obj, "dtype");
  spec.dtype = ByName(spec.dtype_name);
  ffi::json::Array shape = Need<ffi::json::Array>(*obj, "shape");
  for (size_t i = 0; i < shape.size(); ++i) spec.shape.push_back(Item<int64_t>(shape, i));
  spec.low = spec.high = spec.shape;
  spec.ranged.assign(spec.shape.size(), false);
  if (Field(*obj, "ranges")) {
    ffi::json::Array ranges = Need<ffi::json::Array>(*obj, "ranges");
    for (size_t i = 0; i < ranges.size(); ++i) {
      ffi::json::Array r = Item<ffi::json::Array>(ranges, i);
      if (r.size() != 3) throw BadMetadata{"a range is not (axis, low, high)"};
      int64_t axis = Item<int64_t>(r, 0);
      if (axis < 0 || static_cast<size_t>(axis) >= spec.shape.size())
        throw BadMetadata{"a range's axis is out of range"};
      spec.ranged[axis] = true;
      spec.low[axis] = Item<int64_t>(r, 1);
      spec.high[axis] = Item<int64_t>(r, 2);
    }
  }
  return spec;
}

Metadata ParseMetadata(const std::string& path, const std::string& text) {
  const int64_t kFormatVersion = 1;  // targets/library_format.py FORMAT_VERSION
  Metadata meta;
  meta.json = text;
  int64_t format_version = 0;
  try {
    ffi::String error;
    ffi::json::Value root = ffi::json::Parse(ffi::String(text), &error);
    if (!error.empty()) throw BadMetadata{"not JSON: " + std::string(error)};
    std::optional<ffi::json::Object> obj = root.try_cast<ffi::json::Object>();
    if (!obj) throw BadMetadata{"not a JSON object"};
    format_version = Need<int64_t>(*obj, "format_version");
    ffi::json::Array inputs = Need<ffi::json::Array>(*obj, "inputs");
    for (size_t i = 0; i < inputs.size(); ++i) meta.inputs.push_back(ParseSpec(inputs[i]));
    ffi::json::Array outputs = Need<ffi::json::Array>(*obj, "outputs");
    for (size_t i = 0; i < outputs.size(); ++i) meta.outputs.push_back(ParseSpec(outputs[i]));
    meta.target_name = Need<ffi::String>(*obj, "target_name");
    meta.device = Need<ffi::String>(*obj, "device");
    meta.tvm_version = Need<ffi::String>(*obj, "tvm_version");
    ffi::json::Object extra = Need<ffi::json::Object>(*obj, "extra");
    if (std::optional<ffi::Any> cpu = Field(extra, "cpu_features")) {
      std::optional<ffi::json::Object> features = cpu->try_cast<ffi::json::Object>();
      if (!features) throw BadMetadata{"'cpu_features' is not an object"};
      meta.has_cpu_features = true;
      meta.cpu_arch = Need<ffi::String>(*features, "arch");
      ffi::json::Array names = Need<ffi::json::Array>(*features, "features");
      for (size_t i = 0; i < names.size(); ++i) meta.cpu_features.push_back(Item<ffi::String>(names, i));
    }
  } catch (const BadMetadata& bad) {
    Fail(KILN_E_LIBRARY, path + ": kiln metadata is unreadable (" + bad.what + "); recompile the model");
  } catch (const ffi::Error& err) {
    Fail(KILN_E_LIBRARY, path + ": kiln metadata is unreadable (" + TvmMessage(err) + "); recompile the model");
  }
  if (format_version > kFormatVersion)
    Fail(KILN_E_LIBRARY, path + ": built by a newer kiln (metadata format " + std::to_string(format_version) +
                             "); upgrade kiln to load it");
  return meta;
}

// ---------------------------------------------------------------------------------------------
// This machine: architecture and CPU features (targets/registry.py cpu_flags).

#if defined(__x86_64__)
const char kArch[] = "x86_64";
const uint16_t kMachine = kEmX86_64;
#elif defined(__aarch64__)
const char kArch[] = "aarch64";
const uint16_t kMachine = kEmAarch64;
#else
#error "kiln's C runtime supports x86_64 and aarch64"
#endif

std::string MachineName(uint16_t machine) {
  if (machine == kEmX86_64) return "x86_64";
  if (machine == kEmAarch64) return "aarch64";
  return "ELF machine " + std::to_string(machine);
}

// The feature names of /proc/cpuinfo: x86 "flags", AArch64 "Features". Only this architecture's
// key is read: under qemu-user, /proc/cpuinfo is the x86 host's. On AArch64 without a Features
// line, the HWCAP bits (the same names; bits as targets/cpu_features.py _HWCAP/_HWCAP2).
std::set<std::string> CpuFlags() {
#if defined(__aarch64__)
  const std::string key = "Features";
#else
  const std::string key = "flags";
#endif
  std::set<std::string> flags;
  bool found = false;
  if (FILE* f = std::fopen("/proc/cpuinfo", "r")) {
    std::string line;
    int c;
    while (!found && (c = std::fgetc(f)) != EOF) {
      if (c != '\n') {
        line += static_cast<char>(c);
        continue;
      }
      size_t colon = line.find(':');
      std::string name = line.substr(0, colon);
      while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.pop_back();
      if (colon != std::string::npos && name == key) {
        found = true;
        size_t pos = colon + 1;
        while (pos < line.size()) {
          size_t start = line.find_first_not_of(" \t", pos);
          if (start == std::string::npos) break;
          size_t end = line.find_first_of(" \t", start);
          if (end == std::string::npos) end = line.size();
          flags.insert(line.substr(start, end - start));
          pos = end;
        }
      }
      line.clear();
    }
    std::fclose(f);
  }
#if defined(__aarch64__)
  if (!found) {
    struct Bit {
      const char* name;
      unsigned long type;
      int bit;
    };
    static const Bit kBits[] = {{"asimd", AT_HWCAP, 1},   {"asimdhp", AT_HWCAP, 10}, {"asimddp", AT_HWCAP, 20},
                                {"sve", AT_HWCAP, 22},    {"sve2", AT_HWCAP2, 1},    {"i8mm", AT_HWCAP2, 13},
                                {"bf16", AT_HWCAP2, 14}};
    for (const Bit& b : kBits)
      if (getauxval(b.type) >> b.bit & 1) flags.insert(b.name);
  }
#endif
  return flags;
}

int UsableCores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return 1;
}

// kiln_load's checks on the file and its metadata (compiler/runtime.py check_runnable_here).
void CheckRunnableHere(const std::string& path, const std::vector<uint8_t>& data, const Metadata& meta) {
  if (meta.tvm_version != KILN_TVM_VERSION)
    Fail(KILN_E_LIBRARY, path + " was built with TVM " + meta.tvm_version + ", this runtime has TVM " +
                             KILN_TVM_VERSION + "; build the C runtime against apache-tvm==" + meta.tvm_version +
                             " or recompile the model");
  uint16_t machine = ElfMachine(data);
  if (machine != kMachine || (!meta.cpu_arch.empty() && meta.cpu_arch != kArch))
    Fail(KILN_E_LIBRARY, path + " was built for " + (machine != kMachine ? MachineName(machine) : meta.cpu_arch) +
                             " (target '" + meta.target_name + "'); this machine is " + kArch +
                             ". Run it on that device (see docs/targets.md) or recompile with --target host");
  if (!meta.has_cpu_features)
    Fail(KILN_E_LIBRARY, path + ": its metadata does not list the CPU features it needs (built by an older "
                               "kiln); recompile it");
  std::set<std::string> flags = CpuFlags();
  std::vector<std::string> missing;
  for (const std::string& feature : meta.cpu_features)
    if (!flags.count(feature)) missing.push_back(feature);
  std::sort(missing.begin(), missing.end());
  if (!missing.empty()) {
    std::string names;
    for (size_t i = 0; i < missing.size(); ++i) names += (i ? ", " : "") + missing[i];
    Fail(KILN_E_CPU, path + " was built for '" + meta.target_name + "' and needs the CPU feature" +
                         (missing.size() > 1 ? "s " : " ") + names +
                         ", which this CPU lacks (running it would crash with an illegal instruction); "
                         "recompile with --target host or a preset this CPU runs");
  }
  if (meta.device != "cpu")
    Fail(KILN_E_LIBRARY, path + " targets " + meta.device + " ('" + meta.target_name +
                             "'); the C runtime runs CPU libraries only (use kiln's Python runtime)");
  for (const std::vector<Spec>* specs : {&meta.inputs, &meta.outputs})
    for (const Spec& spec : *specs)
      if (spec.dtype == KILN_DTYPE_UNKNOWN)
        Fail(KILN_E_LIBRARY, path + ": " + spec.Describe() + " has a dtype the C runtime does not support");
}

// ---------------------------------------------------------------------------------------------
// TVM.

// The dynamic loader hands back the library it already has for a path while that one is still
// loaded, so a library rebuilt or replaced at the same path and loaded again in the same process
// would silently run the old code with the new metadata (compiler/runtime.py _load_module_fresh).
// A path whose file changed since this process first loaded it is loaded from a private copy of
// the bytes kiln_load read and verified.
std::mutex g_loaded_lock;
std::map<std::string, FileIdentity> g_loaded;  // resolved path -> the file first loaded from it

// The file TVM should open for `path`; sets *copy to a temporary file to remove after loading.
std::string LoadPath(const std::string& path, const FileIdentity& identity, const std::vector<uint8_t>& data,
                     std::string* copy) {
  char* real = realpath(path.c_str(), nullptr);
  std::string key = real ? real : path;
  std::free(real);
  {
    std::lock_guard<std::mutex> hold(g_loaded_lock);
    auto entry = g_loaded.emplace(key, identity);
    if (entry.second || entry.first->second == identity) return path;
  }
  const char* tmp = std::getenv("TMPDIR");
  std::string dir = tmp && *tmp ? tmp : "/tmp";
  std::string name = dir + "/kiln-reload-XXXXXX.so";
  int fd = mkstemps(&name[0], 3);
  if (fd < 0) Fail(KILN_E_IO, path + " changed since this process loaded it; cannot write a private copy in " + dir +
                                  ": " + std::strerror(errno));
  *copy = name;
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = errno;
      close(fd);
      unlink(name.c_str());
      Fail(KILN_E_IO, "cannot write a private copy of " + path + " to " + name + ": " + std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  close(fd);
  return name;
}

struct AlignedCPUAlloc {  // 64-byte aligned, as TVM's own CPU allocator
  void AllocData(DLTensor* t) {
    size_t bytes = (ffi::GetDataSize(*t) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, bytes ? bytes : 64);
    if (t->data == nullptr) throw std::bad_alloc();
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

ffi::Function GlobalFunction(const char* name) {
  std::optional<ffi::Function> f = ffi::Function::GetGlobal(name);
  if (!f) Fail(KILN_E_RUNTIME, std::string("the TVM runtime has no function ") + name);
  return *f;
}

// Threads of this calling thread's TVM pool (compiler/runtime.py configure_threads); the pool
// is per thread, so kiln_run configures it again on a thread that has not used this count.
thread_local int t_configured_threads = 0;

int ConfigureThreads(int wanted) {
  const int kBigCores = 1;  // TVM's ThreadGroup::kBig; with TVM_BIND_THREADS=0 no thread is pinned
  GlobalFunction("runtime.config_threadpool")(kBigCores, wanted);
  t_configured_threads = wanted;
  return static_cast<int>(GlobalFunction("runtime.NumThreads")().cast<int64_t>());
}

}  // namespace

struct kiln_model {
  std::string path;
  Metadata meta;
  std::vector<kiln_tensor_spec> input_specs, output_specs;
  int threads_wanted = 0, threads_used = 0;
  // Released in reverse order: main and the VM before the library that holds their code.
  std::optional<ffi::Module> lib, vm;
  std::optional<ffi::Function> main;
  std::mutex lock;
  std::vector<ffi::Tensor> inputs;   // copies of the last inputs, reused when the shape repeats
  std::vector<ffi::Tensor> outputs;  // of the last successful run
};

namespace {

kiln_tensor_spec PublicSpec(const Spec& s) {
  return kiln_tensor_spec{s.name.c_str(), s.dtype,        s.dtype_name.c_str(), static_cast<int32_t>(s.shape.size()),
                          s.shape.data(), s.low.data(), s.high.data()};
}

std::string ShapeText(const int64_t* dims, int32_t ndim) {
  if (ndim == 0) return "scalar";
  std::string out;
  for (int32_t i = 0; i < ndim; ++i) out += (i ? "x" : "") + std::to_string(dims[i]);
  return out;
}

// One input checked (CompiledModel._ordered_arrays) and copied into a TVM tensor.
ffi::Tensor CheckedCopy(const Spec& spec, const kiln_tensor& t, const ffi::Tensor& reuse) {
  const std::string where = "input '" + spec.name + "': ";
  if (t.ndim < 0) Fail(KILN_E_INPUT, where + "ndim " + std::to_string(t.ndim) + "; expected " + spec.Describe());
  if (t.ndim > 0 && t.shape == nullptr)
    Fail(KILN_E_INPUT, where + "shape is NULL with ndim " + std::to_string(t.ndim) + "; expected " + spec.Describe());
  if (t.dtype != spec.dtype) {
    const DtypeInfo* info = ByDtype(t.dtype);
    std::string got = info ? info->name : "unknown (" + std::to_string(static_cast<int>(t.dtype)) + ")";
    Fail(KILN_E_INPUT, where + "dtype " + got + ", expected " + spec.dtype_name);
  }
  std::string problem = spec.Mismatch(t.shape, t.ndim);
  if (!problem.empty())
    Fail(KILN_E_INPUT, where + "shape " + ShapeText(t.shape, t.ndim) + ", expected " + spec.Dims() + " (" + problem +
                           "; " + spec.Describe() + ")");
  size_t count = 1;
  for (int32_t i = 0; i < t.ndim; ++i) {
    uint64_t dim = static_cast<uint64_t>(t.shape[i]);
    if (dim != 0 && count > SIZE_MAX / 16 / dim)
      Fail(KILN_E_INPUT, where + "shape " + ShapeText(t.shape, t.ndim) + " is too large");
    count *= dim;
  }
  size_t bytes = count * ByDtype(t.dtype)->size;
  if (bytes > 0 && t.data == nullptr) Fail(KILN_E_INPUT, where + "data is NULL");
  bool same_shape = reuse.defined() && reuse.use_count() == 1 && reuse.GetDLTensorPtr()->ndim == t.ndim &&
                    std::equal(t.shape, t.shape + t.ndim, reuse.GetDLTensorPtr()->shape);
  ffi::Tensor tensor = same_shape ? reuse
                                  : ffi::Tensor::FromNDAlloc(AlignedCPUAlloc(), ffi::ShapeView(t.shape, t.ndim),
                                                             ffi::StringToDLDataType(ffi::String(spec.dtype_name)),
                                                             DLDevice{kDLCPU, 0});
  if (bytes) std::memcpy(tensor.GetDLTensorPtr()->data, t.data, bytes);
  return tensor;
}

void CheckOutput(const kiln_model& m, size_t i, const ffi::Tensor& tensor) {
  const std::string where = "output '" + m.meta.outputs[i].name + "'";
  if (tensor.GetDLTensorPtr()->device.device_type != kDLCPU) Fail(KILN_E_RUNTIME, where + " is not on the CPU");
  if (!tensor.IsContiguous()) Fail(KILN_E_RUNTIME, where + " is not a contiguous tensor");
  if (ByName(std::string(ffi::DLDataTypeToString(tensor.GetDLTensorPtr()->dtype))) == KILN_DTYPE_UNKNOWN)
    Fail(KILN_E_RUNTIME, where + " has dtype " + std::string(ffi::DLDataTypeToString(tensor.GetDLTensorPtr()->dtype)) +
                             ", which the C runtime does not support");
}

}  // namespace

extern "C" {

kiln_status kiln_load(const char* path, int threads, kiln_model** model) {
  if (model == nullptr) return Report(KILN_E_ARGUMENT, "kiln_load: model is NULL");
  *model = nullptr;
  if (path == nullptr) return Report(KILN_E_ARGUMENT, "kiln_load: path is NULL");
  if (threads < 0)
    return Report(KILN_E_ARGUMENT, "kiln_load: threads is " + std::to_string(threads) + "; give 0 (every core) or more");
  kiln_model* m = new (std::nothrow) kiln_model();
  if (m == nullptr) return Report(KILN_E_RUNTIME, "out of memory");
  kiln_status status = Guard(KILN_E_LIBRARY, [&] {
    m->path = path;
    std::string load_path, copy;
    {
      FileIdentity identity;
      std::vector<uint8_t> data = ReadFile(m->path, &identity);  // freed before TVM maps the file
      if (data.size() < 64 || std::memcmp(data.data(), "\x7f" "ELF", 4) != 0)
        Fail(KILN_E_LIBRARY, m->path + ": not an ELF shared library; give a library made by `kiln compile`");
      VerifySeal(m->path, data);  // before anything in the file is parsed
      std::optional<std::string> json = ElfSection(m->path, data, ".kiln_metadata");
      if (!json)
        Fail(KILN_E_LIBRARY,
             m->path + ": not a kiln library (no .kiln_metadata section); compile it with `kiln compile`");
      m->meta = ParseMetadata(m->path, *json);
      CheckRunnableHere(m->path, data, m->meta);
      load_path = LoadPath(m->path, identity, data, &copy);
    }
    for (const Spec& s : m->meta.inputs) m->input_specs.push_back(PublicSpec(s));
    for (const Spec& s : m->meta.outputs) m->output_specs.push_back(PublicSpec(s));

    int cores = UsableCores();
    m->threads_wanted = threads > 0 ? threads : cores;
    // The pool's size, read when this thread's pool starts; the caller's own setting wins.
    setenv("TVM_NUM_THREADS", std::to_string(std::max(m->threads_wanted, cores)).c_str(), 0);
    setenv("TVM_BIND_THREADS", "0", 0);
    try {
      m->lib = ffi::Module::LoadFromFile(ffi::String(load_path));
    } catch (const ffi::Error& err) {
      if (!copy.empty()) unlink(copy.c_str());
      Fail(KILN_E_LIBRARY, m->path + ": TVM could not load the library: " + TvmMessage(err));
    }
    if (!copy.empty()) unlink(copy.c_str());  // stays mapped
    ffi::Optional<ffi::Function> load_exec = (*m->lib)->GetFunction("vm_load_executable");
    if (!load_exec) Fail(KILN_E_LIBRARY, m->path + ": not a Relax VM library (no vm_load_executable)");
    m->vm = (*load_exec)().cast<ffi::Module>();
    // One CPU device (kDLCPU, index 0) with the pooled allocator (2), as tvm.runtime.vm does.
    (*m->vm)->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
    ffi::Optional<ffi::Function> main_fn = (*m->vm)->GetFunction("main");
    if (!main_fn) Fail(KILN_E_LIBRARY, m->path + ": the library has no function main");
    m->main = *main_fn;
    m->threads_used = ConfigureThreads(m->threads_wanted);
  });
  if (status != KILN_OK) {
    delete m;
    return status;
  }
  *model = m;
  return KILN_OK;
}

void kiln_free(kiln_model* model) { delete model; }

int kiln_num_inputs(const kiln_model* model) { return model ? static_cast<int>(model->input_specs.size()) : -1; }
int kiln_num_outputs(const kiln_model* model) { return model ? static_cast<int>(model->output_specs.size()) : -1; }
int kiln_num_threads(const kiln_model* model) { return model ? model->threads_used : -1; }
const char* kiln_metadata_json(const kiln_model* model) { return model ? model->meta.json.c_str() : nullptr; }
const char* kiln_target_name(const kiln_model* model) { return model ? model->meta.target_name.c_str() : nullptr; }

static kiln_status SpecAt(const char* fn, const kiln_model* model, const std::vector<kiln_tensor_spec>& specs,
                          int index, kiln_tensor_spec* spec) {
  if (model == nullptr || spec == nullptr) return Report(KILN_E_ARGUMENT, std::string(fn) + ": model or spec is NULL");
  if (index < 0 || static_cast<size_t>(index) >= specs.size())
    return Report(KILN_E_ARGUMENT, std::string(fn) + ": index " + std::to_string(index) +
                                       " out of range (the model has " + std::to_string(specs.size()) + ")");
  *spec = specs[index];
  return KILN_OK;
}

kiln_status kiln_input_spec(const kiln_model* model, int index, kiln_tensor_spec* spec) {
  return SpecAt("kiln_input_spec", model, model ? model->input_specs : std::vector<kiln_tensor_spec>(), index, spec);
}

kiln_status kiln_output_spec(const kiln_model* model, int index, kiln_tensor_spec* spec) {
  return SpecAt("kiln_output_spec", model, model ? model->output_specs : std::vector<kiln_tensor_spec>(), index, spec);
}

kiln_status kiln_run(kiln_model* model, const kiln_tensor* inputs, int num_inputs) {
  if (model == nullptr) return Report(KILN_E_ARGUMENT, "kiln_run: model is NULL");
  if (num_inputs > 0 && inputs == nullptr) return Report(KILN_E_ARGUMENT, "kiln_run: inputs is NULL");
  std::lock_guard<std::mutex> hold(model->lock);
  model->outputs.clear();
  return Guard(KILN_E_RUNTIME, [&] {
    const std::vector<Spec>& specs = model->meta.inputs;
    if (num_inputs < 0 || static_cast<size_t>(num_inputs) != specs.size()) {
      std::string expected;
      for (size_t i = 0; i < specs.size(); ++i) expected += (i ? ", " : "") + specs[i].Describe();
      Fail(KILN_E_INPUT, "got " + std::to_string(num_inputs) + " inputs, the model expects " +
                             std::to_string(specs.size()) + ": " + expected);
    }
    model->inputs.resize(specs.size());
    std::vector<ffi::Tensor> tensors;
    for (size_t i = 0; i < specs.size(); ++i) tensors.push_back(CheckedCopy(specs[i], inputs[i], model->inputs[i]));
    model->inputs = tensors;
    tensors.clear();  // the model's copies are then the only references: reusable next time
    if (t_configured_threads != model->threads_wanted) ConfigureThreads(model->threads_wanted);
    std::vector<ffi::AnyView> args(model->inputs.begin(), model->inputs.end());
    ffi::Any result;
    model->main->CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
    std::vector<ffi::Tensor> outs;
    if (std::optional<ffi::Tensor> single = result.as<ffi::Tensor>()) {
      outs.push_back(*single);
    } else if (std::optional<ffi::Array<ffi::Any>> many = result.as<ffi::Array<ffi::Any>>()) {
      for (const ffi::Any& item : *many) {
        std::optional<ffi::Tensor> t = item.as<ffi::Tensor>();
        if (!t) Fail(KILN_E_RUNTIME, "the model returned a " + std::string(item.GetTypeKey()) + ", not a tensor");
        outs.push_back(*t);
      }
    } else {
      Fail(KILN_E_RUNTIME, "the model returned a " + std::string(result.GetTypeKey()) + ", not tensors");
    }
    if (outs.size() != model->meta.outputs.size())
      Fail(KILN_E_RUNTIME, "the model returned " + std::to_string(outs.size()) + " outputs, its metadata lists " +
                               std::to_string(model->meta.outputs.size()));
    for (size_t i = 0; i < outs.size(); ++i) CheckOutput(*model, i, outs[i]);
    model->outputs = std::move(outs);
  });
}

kiln_status kiln_output(const kiln_model* model, int index, kiln_tensor* tensor) {
  if (model == nullptr || tensor == nullptr) return Report(KILN_E_ARGUMENT, "kiln_output: model or tensor is NULL");
  if (model->outputs.empty())
    return Report(KILN_E_ARGUMENT, "kiln_output: no outputs (no kiln_run has succeeded since the last one failed or "
                                   "the model was loaded)");
  if (index < 0 || static_cast<size_t>(index) >= model->outputs.size())
    return Report(KILN_E_ARGUMENT, "kiln_output: index " + std::to_string(index) + " out of range (the model has " +
                                       std::to_string(model->outputs.size()) + " outputs)");
  const DLTensor* t = model->outputs[index].GetDLTensorPtr();
  tensor->data = static_cast<const char*>(t->data) + t->byte_offset;
  tensor->dtype = ByName(std::string(ffi::DLDataTypeToString(t->dtype)));
  tensor->ndim = t->ndim;
  tensor->shape = t->shape;
  return KILN_OK;
}

const char* kiln_last_error(void) { return t_last_error.c_str(); }

const char* kiln_status_name(kiln_status status) {
  switch (status) {
    case KILN_OK: return "KILN_OK";
    case KILN_E_IO: return "KILN_E_IO";
    case KILN_E_LIBRARY: return "KILN_E_LIBRARY";
    case KILN_E_CPU: return "KILN_E_CPU";
    case KILN_E_INPUT: return "KILN_E_INPUT";
    case KILN_E_RUNTIME: return "KILN_E_RUNTIME";
    case KILN_E_ARGUMENT: return "KILN_E_ARGUMENT";
  }
  return "KILN_E_UNKNOWN";
}

const char* kiln_dtype_name(kiln_dtype dtype) {
  const DtypeInfo* info = ByDtype(dtype);
  return info ? info->name : "unknown";
}

size_t kiln_dtype_size(kiln_dtype dtype) {
  const DtypeInfo* info = ByDtype(dtype);
  return info ? info->size : 0;
}

size_t kiln_tensor_nbytes(const kiln_tensor* tensor) {
  if (tensor == nullptr || tensor->ndim < 0 || (tensor->ndim > 0 && tensor->shape == nullptr)) return 0;
  size_t n = kiln_dtype_size(tensor->dtype);
  for (int32_t i = 0; i < tensor->ndim; ++i) {
    if (tensor->shape[i] < 0) return 0;
    n *= static_cast<size_t>(tensor->shape[i]);
  }
  return n;
}

}  // extern "C"
