// kiln's aarch64 runner: load a kiln library with the TVM runtime, run "main" once.
//
// Built and driven by targets/emulation.py (run under qemu-aarch64); uses only the tvm-ffi
// C++ API, so it needs libtvm_ffi.so and libtvm_runtime.so (linked with --no-as-needed so the
// runtime registers its module loaders and the Relax VM).
//
//   arm_runner LIB.so OUT_DIR [DTYPE SHAPE IN_FILE]...
//
// SHAPE is "1x3x224x224" ("" for a scalar); IN_FILE holds the input's raw C-order bytes.
// Writes OUT_DIR/output<i>.bin for each output and prints "output <i> <dtype> <shape>" lines.
// Exit status: 0 on success, 1 on a TVM error (message on stderr), 2 on bad usage or I/O.
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

struct AlignedCPUAlloc {  // 64-byte aligned, as TVM's own CPU allocator
  void AllocData(DLTensor* t) {
    size_t bytes = (ffi::GetDataSize(*t) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, bytes ? bytes : 64);
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

[[noreturn]] void Fail(const std::string& msg) {
  std::cerr << "arm_runner: " << msg << std::endl;
  std::exit(2);
}

std::vector<int64_t> ParseShape(const std::string& text) {
  std::vector<int64_t> shape;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('x', start);
    if (end == std::string::npos) end = text.size();
    shape.push_back(std::stoll(text.substr(start, end - start)));
    start = end + 1;
  }
  return shape;
}

ffi::Tensor ReadInput(const std::string& dtype, const std::string& shape, const std::string& path) {
  std::vector<int64_t> dims = ParseShape(shape);
  DLDevice cpu{kDLCPU, 0};
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(AlignedCPUAlloc(), ffi::ShapeView(dims.data(), dims.size()),
                                           ffi::StringToDLDataType(dtype), cpu);
  size_t bytes = ffi::GetDataSize(t);
  std::ifstream in(path, std::ios::binary);
  if (!in.read(static_cast<char*>(t.GetDLTensorPtr()->data), static_cast<std::streamsize>(bytes)) || in.peek() != EOF)
    Fail(path + ": expected exactly " + std::to_string(bytes) + " bytes for " + dtype + "[" + shape + "]");
  return t;
}

void WriteOutput(const ffi::Tensor& tensor, size_t index, const std::string& out_dir) {
  const DLTensor* t = tensor.GetDLTensorPtr();
  if (t->device.device_type != kDLCPU || !tensor.IsContiguous()) Fail("output is not a contiguous CPU tensor");
  std::string shape;
  for (int i = 0; i < t->ndim; ++i) shape += (i ? "x" : "") + std::to_string(t->shape[i]);
  std::string path = out_dir + "/output" + std::to_string(index) + ".bin";
  std::ofstream out(path, std::ios::binary);
  const char* data = static_cast<const char*>(t->data) + t->byte_offset;
  if (!out.write(data, static_cast<std::streamsize>(ffi::GetDataSize(*t)))) Fail("cannot write " + path);
  std::cout << "output " << index << " " << ffi::DLDataTypeToString(t->dtype) << " " << shape << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3 || (argc - 3) % 3 != 0) Fail("usage: arm_runner LIB.so OUT_DIR [DTYPE SHAPE IN_FILE]...");
  try {
    ffi::Module lib = ffi::Module::LoadFromFile(argv[1]);
    ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    // One CPU device (kDLCPU=1, index 0) with the pooled allocator (2), as tvm.runtime.vm does.
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
    std::vector<ffi::Tensor> inputs;
    for (int i = 3; i < argc; i += 3) inputs.push_back(ReadInput(argv[i], argv[i + 1], argv[i + 2]));
    std::vector<ffi::AnyView> args(inputs.begin(), inputs.end());
    ffi::Any result;
    vm->GetFunction("main").value().CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
    if (auto single = result.as<ffi::Tensor>()) {
      WriteOutput(*single, 0, argv[2]);
    } else {
      ffi::Array<ffi::Any> outs = result.cast<ffi::Array<ffi::Any>>();
      for (size_t i = 0; i < outs.size(); ++i) WriteOutput(outs[i].cast<ffi::Tensor>(), i, argv[2]);
    }
  } catch (const ffi::Error& err) {
    std::cerr << err.what() << std::endl;
    return 1;
  }
  return 0;
}
