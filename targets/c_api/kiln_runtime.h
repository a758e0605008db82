/*
 * kiln_runtime.h: run a library made by `kiln compile` from C or C++, without Python.
 *
 *   kiln_model* m;
 *   if (kiln_load("model.so", 0, &m) != KILN_OK) { fprintf(stderr, "%s\n", kiln_last_error()); ... }
 *   int64_t shape[4] = {1, 3, 32, 32};
 *   kiln_tensor x = {pixels, KILN_FLOAT32, 4, shape};
 *   if (kiln_run(m, &x, 1) != KILN_OK) { fprintf(stderr, "%s\n", kiln_last_error()); ... }
 *   kiln_tensor y;
 *   kiln_output(m, 0, &y);                 (y.data stays valid until the next kiln_run or kiln_free)
 *   kiln_free(m);
 *
 * Implemented in kiln_runtime.cc over TVM's C++ runtime (libtvm_runtime.so, libtvm_ffi.so); see
 * docs/c-api.md. kiln_load makes the same checks as kiln's Python runtime (compiler/runtime.py),
 * before TVM loads the file: the seal (a changed or truncated file), the metadata, the TVM
 * version, the architecture and the CPU features the library needs. kiln_run checks every input
 * against the metadata (count, dtype, rank, each dimension, symbolic ranges) before TVM sees it.
 *
 * Every function that can fail returns a kiln_status; the message (naming the file, input or CPU
 * feature) is kiln_last_error(), per thread. CPU libraries only (a CUDA library is refused).
 *
 * Threads: one kiln_model may be used from several threads, one call at a time (kiln_run takes a
 * lock; the outputs it leaves are shared by all of them, so a caller that reads outputs while
 * another thread runs must serialise both itself).
 */
#ifndef KILN_RUNTIME_H_
#define KILN_RUNTIME_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Exported from libkiln_runtime.so, which hides everything else. */
#if defined(__GNUC__)
#define KILN_API __attribute__((visibility("default")))
#else
#define KILN_API
#endif

/* Version of this interface; changes when a struct or a signature changes. */
#define KILN_RUNTIME_API_VERSION 1

typedef enum kiln_status {
  KILN_OK = 0,
  KILN_E_IO = 1,       /* the file is missing or unreadable */
  KILN_E_LIBRARY = 2,  /* not a kiln library, damaged or modified (seal mismatch), unreadable or newer metadata,
                          another TVM version, another architecture, a CUDA library, or TVM could not load it */
  KILN_E_CPU = 3,      /* the library needs a CPU feature this CPU lacks (the message names it) */
  KILN_E_INPUT = 4,    /* inputs do not match the model (the message names the input and what it expects) */
  KILN_E_RUNTIME = 5,  /* TVM failed while running the model, or returned something unexpected */
  KILN_E_ARGUMENT = 6  /* misuse of this API: a NULL pointer, an index out of range */
} kiln_status;

/* Element types, as the metadata names them ("float32", ...): see kiln_dtype_name. */
typedef enum kiln_dtype {
  KILN_DTYPE_UNKNOWN = 0,
  KILN_FLOAT32 = 1,
  KILN_FLOAT16 = 2,
  KILN_BFLOAT16 = 3,
  KILN_FLOAT64 = 4,
  KILN_INT8 = 5,
  KILN_INT16 = 6,
  KILN_INT32 = 7,
  KILN_INT64 = 8,
  KILN_UINT8 = 9,
  KILN_UINT16 = 10,
  KILN_UINT32 = 11,
  KILN_UINT64 = 12,
  KILN_BOOL = 13 /* one byte per element, 0 or 1 */
} kiln_dtype;

/* A loaded library. Opaque; made by kiln_load, released by kiln_free. */
typedef struct kiln_model kiln_model;

/* What the model expects (inputs) or returns (outputs). All pointers are owned by the model and
 * stay valid until kiln_free. */
typedef struct kiln_tensor_spec {
  const char* name;          /* the ONNX name */
  kiln_dtype dtype;
  const char* dtype_name;    /* "float32", ... as in the metadata */
  int32_t ndim;
  const int64_t* shape;      /* ndim sizes; -1: symbolic, known only at run time */
  /* The sizes kiln_run accepts per axis: for a symbolic input axis compiled with a range
   * (`--input-shape x:1x3x48x32..2048`) its bounds (shape_max -1: no upper bound); for any other
   * axis, shape_min[i] == shape_max[i] == shape[i]. */
  const int64_t* shape_min;
  const int64_t* shape_max;
} kiln_tensor_spec;

/* A dense C-order (row-major) tensor on the CPU. For kiln_run the caller owns everything: the
 * data is copied before the call returns, so the buffers may be reused at once. From kiln_output
 * the model owns data and shape (valid until the next kiln_run or kiln_free). */
typedef struct kiln_tensor {
  const void* data;
  kiln_dtype dtype;
  int32_t ndim;
  const int64_t* shape;      /* ndim sizes (NULL allowed when ndim is 0: a scalar) */
} kiln_tensor;

/* Load the library at `path` and prepare it to run on `threads` CPU threads (0: every core this
 * process may use). On success *model is set and KILN_OK returned; otherwise *model is NULL.
 *
 * Checks, before TVM opens the file: KILN_E_IO (missing, unreadable), KILN_E_LIBRARY (not a
 * kiln library; its seal does not match, i.e. it changed after `kiln compile`; metadata
 * unreadable or from a newer kiln; built with another TVM version; for another architecture;
 * a CUDA library), KILN_E_CPU (needs CPU features this CPU lacks, as /proc/cpuinfo names them).
 *
 * Threads: TVM's thread pool is per calling thread and sized when it starts (TVM_NUM_THREADS,
 * which kiln_load sets to max(threads, cores) when it is not already set); kiln_run uses
 * `threads` of it on whichever thread calls it. */
KILN_API kiln_status kiln_load(const char* path, int threads, kiln_model** model);

/* Release the model, its inputs' copies and its outputs (NULL: nothing). */
KILN_API void kiln_free(kiln_model* model);

KILN_API int kiln_num_inputs(const kiln_model* model);   /* -1 when model is NULL */
KILN_API int kiln_num_outputs(const kiln_model* model);  /* -1 when model is NULL */
KILN_API kiln_status kiln_input_spec(const kiln_model* model, int index, kiln_tensor_spec* spec);
KILN_API kiln_status kiln_output_spec(const kiln_model* model, int index, kiln_tensor_spec* spec);

/* The threads kiln_run uses (after kiln_load: TVM's answer, which can be fewer than asked when a
 * pool was already started smaller); -1 when model is NULL. */
KILN_API int kiln_num_threads(const kiln_model* model);

/* The library's metadata: the JSON object of docs/library-format.md (owned by the model). */
KILN_API const char* kiln_metadata_json(const kiln_model* model);

/* The preset the library was built for ("rpi4", "host", "custom", ...; owned by the model). */
KILN_API const char* kiln_target_name(const kiln_model* model);

/* Run the model once on `num_inputs` inputs, in the order of kiln_input_spec. Each is checked
 * against its spec first: a wrong count, dtype, rank or size (a symbolic axis outside its range)
 * is KILN_E_INPUT, naming the input and what it expects, and nothing runs. A failure inside TVM
 * is KILN_E_RUNTIME. On KILN_OK the outputs are read with kiln_output. */
KILN_API kiln_status kiln_run(kiln_model* model, const kiln_tensor* inputs, int num_inputs);

/* Output `index` of the last successful kiln_run (KILN_E_ARGUMENT before any): data and shape are
 * owned by the model, valid until the next kiln_run or kiln_free. Symbolic dims are concrete. */
KILN_API kiln_status kiln_output(const kiln_model* model, int index, kiln_tensor* tensor);

/* The message of the last call on this thread that failed ("" when none has); valid until the
 * next failing call on this thread. */
KILN_API const char* kiln_last_error(void);

KILN_API const char* kiln_status_name(kiln_status status);  /* "KILN_E_INPUT", ... */
KILN_API const char* kiln_dtype_name(kiln_dtype dtype);     /* "float32", ...; "unknown" */
KILN_API size_t kiln_dtype_size(kiln_dtype dtype);          /* bytes per element; 0 for KILN_DTYPE_UNKNOWN */
/* Bytes of the tensor's data: product of its shape times kiln_dtype_size (0 if a dim is < 0). */
KILN_API size_t kiln_tensor_nbytes(const kiln_tensor* tensor);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif /* KILN_RUNTIME_H_ */
