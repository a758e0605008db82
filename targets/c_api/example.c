/*
 * example: run a kiln library from C with kiln_runtime.h (no Python).
 *
 *   example LIB.so THREADS                                  print the model's inputs and outputs
 *   example LIB.so THREADS OUT_DIR IN[:SHAPE[:DTYPE]]...    run once on raw input files
 *
 * IN holds one input's raw C-order bytes (numpy: x.tofile("x.bin")), in the order the model lists
 * its inputs. SHAPE ("1x3x32x40", "scalar") is needed where the model has a symbolic axis; DTYPE
 * defaults to the model's (giving another shows kiln's input check). THREADS: 0 for every core.
 * Writes OUT_DIR/output<i>.bin (raw bytes) and prints "output <i> <name> <dtype> <shape>" lines.
 *
 * Exit status: 0; the kiln_status (1..6) of a failing kiln call, its message on stderr;
 * 100 for bad usage or an input file that cannot be read.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kiln_runtime.h"

#define MAX_DIMS 16
#define EXIT_USAGE 100

static void print_shape(FILE* out, const int64_t* shape, int32_t ndim) {
  if (ndim == 0) fputs("scalar", out);
  for (int32_t i = 0; i < ndim; ++i) fprintf(out, i ? "x%lld" : "%lld", (long long)shape[i]);
}

static int failed(const char* what, kiln_status status) {
  fprintf(stderr, "example: %s: %s: %s\n", what, kiln_status_name(status), kiln_last_error());
  return (int)status;
}

static kiln_dtype dtype_by_name(const char* name) {
  for (int d = 1; d <= KILN_BOOL; ++d)
    if (strcmp(kiln_dtype_name((kiln_dtype)d), name) == 0) return (kiln_dtype)d;
  return KILN_DTYPE_UNKNOWN;
}

/* Fill `t` (shape in `dims`) from "FILE[:SHAPE[:DTYPE]]" for the input described by `spec`;
 * returns the malloc'd data, or NULL after printing why. */
static void* read_input(char* arg, const kiln_tensor_spec* spec, kiln_tensor* t, int64_t* dims) {
  char* shape_text = strchr(arg, ':');
  char* dtype_text = NULL;
  if (shape_text) {
    *shape_text++ = '\0';
    dtype_text = strchr(shape_text, ':');
    if (dtype_text) *dtype_text++ = '\0';
  }
  t->dtype = spec->dtype;
  if (dtype_text && *dtype_text && (t->dtype = dtype_by_name(dtype_text)) == KILN_DTYPE_UNKNOWN) {
    fprintf(stderr, "example: %s: unknown dtype '%s'\n", arg, dtype_text);
    return NULL;
  }
  t->ndim = 0;
  if (shape_text && *shape_text) {
    if (strcmp(shape_text, "scalar") != 0) {
      for (char* p = shape_text; *p;) {
        char* end;
        if (t->ndim == MAX_DIMS) {
          fprintf(stderr, "example: %s: more than %d dims\n", arg, MAX_DIMS);
          return NULL;
        }
        dims[t->ndim++] = strtoll(p, &end, 10);
        if (end == p || (*end && *end != 'x')) {
          fprintf(stderr, "example: %s: bad shape '%s' (give e.g. 1x3x32x32)\n", arg, shape_text);
          return NULL;
        }
        p = *end ? end + 1 : end;
      }
    }
  } else {
    for (int32_t i = 0; i < spec->ndim; ++i) {
      if (spec->shape[i] < 0) {
        fprintf(stderr, "example: %s: input '%s' has a symbolic axis %d; give its shape as %s:SHAPE\n", arg,
                spec->name, i, arg);
        return NULL;
      }
      dims[i] = spec->shape[i];
    }
    t->ndim = spec->ndim;
  }
  t->shape = dims;
  size_t want = kiln_tensor_nbytes(t);
  FILE* f = fopen(arg, "rb");
  if (!f) {
    perror(arg);
    return NULL;
  }
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  void* data = malloc(want ? want : 1);
  if (size < 0 || (size_t)size != want || !data || fread(data, 1, want, f) != want) {
    fprintf(stderr, "example: %s: %ld bytes, expected %zu for %s[", arg, size, want, kiln_dtype_name(t->dtype));
    print_shape(stderr, dims, t->ndim);
    fputs("]\n", stderr);
    free(data);
    fclose(f);
    return NULL;
  }
  fclose(f);
  t->data = data;
  return data;
}

int main(int argc, char** argv) {
  if (argc < 3 || argc == 4) {
    fprintf(stderr, "usage: example LIB.so THREADS [OUT_DIR IN[:SHAPE[:DTYPE]]...]\n");
    return EXIT_USAGE;
  }
  kiln_model* model;
  kiln_status status = kiln_load(argv[1], atoi(argv[2]), &model);
  if (status != KILN_OK) return failed("kiln_load", status);
  printf("model %s target %s threads %d\n", argv[1], kiln_target_name(model), kiln_num_threads(model));
  for (int io = 0; io < 2; ++io) {
    int n = io ? kiln_num_outputs(model) : kiln_num_inputs(model);
    for (int i = 0; i < n; ++i) {
      kiln_tensor_spec spec;
      (io ? kiln_output_spec : kiln_input_spec)(model, i, &spec);
      printf("%s %d %s %s ", io ? "output-spec" : "input-spec", i, spec.name, spec.dtype_name);
      for (int32_t d = 0; d < spec.ndim; ++d) {
        if (d) putchar('x');
        /* as kiln prints shapes: 1x(2..64)x8, "?" where the size is known only at run time */
        if (spec.shape_min[d] != spec.shape_max[d] || (spec.shape[d] < 0 && spec.shape_min[d] >= 0)) {
          printf("(%lld..", (long long)spec.shape_min[d]);
          if (spec.shape_max[d] >= 0) printf("%lld", (long long)spec.shape_max[d]);
          putchar(')');
        } else if (spec.shape[d] < 0) {
          putchar('?');
        } else {
          printf("%lld", (long long)spec.shape[d]);
        }
      }
      putchar('\n');
    }
  }
  if (argc == 3) {
    kiln_free(model);
    return 0;
  }

  const char* out_dir = argv[3];
  int n_in = argc - 4;
  kiln_tensor* inputs = calloc((size_t)n_in, sizeof(kiln_tensor));
  int64_t(*dims)[MAX_DIMS] = calloc((size_t)n_in, sizeof(*dims));
  void** buffers = calloc((size_t)n_in, sizeof(void*));
  int rc = 0;
  for (int i = 0; i < n_in && rc == 0; ++i) {
    kiln_tensor_spec spec;
    /* more files than inputs: read them as the last input's kind; kiln_run refuses the count */
    int last = kiln_num_inputs(model) - 1;
    if ((status = kiln_input_spec(model, i <= last ? i : last, &spec)) != KILN_OK)
      rc = failed("kiln_input_spec", status);
    else if (!(buffers[i] = read_input(argv[4 + i], &spec, &inputs[i], dims[i])))
      rc = EXIT_USAGE;
  }
  if (rc == 0 && (status = kiln_run(model, inputs, n_in)) != KILN_OK) rc = failed("kiln_run", status);
  for (int i = 0; rc == 0 && i < kiln_num_outputs(model); ++i) {
    kiln_tensor out;
    kiln_tensor_spec spec;
    kiln_output_spec(model, i, &spec);
    if ((status = kiln_output(model, i, &out)) != KILN_OK) {
      rc = failed("kiln_output", status);
      break;
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/output%d.bin", out_dir, i);
    FILE* f = fopen(path, "wb");
    size_t bytes = kiln_tensor_nbytes(&out);
    if (!f || fwrite(out.data, 1, bytes, f) != bytes) {
      perror(path);
      rc = EXIT_USAGE;
    }
    if (f) fclose(f);
    printf("output %d %s %s ", i, spec.name, kiln_dtype_name(out.dtype));
    print_shape(stdout, out.shape, out.ndim);
    putchar('\n');
  }
  for (int i = 0; i < n_in; ++i) free(buffers[i]);
  free(buffers);
  free(dims);
  free(inputs);
  kiln_free(model);
  return rc;
}
