// `import fused_resnet._C` loads this library, which runs the static TORCH_LIBRARY /
// TORCH_LIBRARY_IMPL registrations; the ops then live in torch.ops.fused_resnet. The module
// itself holds one function, cuda_launch_plan (the cuda backend's launch plans, for
// fused_resnet/cuda_plans.py; built in every configuration, CPU-only ones too). Only Python.h
// here: pybind11/torch/extension.h would triple build time. Import torch first so libtorch
// is already loaded.
#include <Python.h>

#include <cstring>
#include <new>

#include "cuda/launch_plan.h"

namespace {

using namespace fr::cuda;
using fr::ConvShape;

bool get_int(PyObject* params, const char* key, int64_t* out) {
  PyObject* v = PyDict_GetItemString(params, key);  // borrowed
  if (v == nullptr) {
    PyErr_Format(PyExc_KeyError, "cuda_launch_plan: no %s in the parameters", key);
    return false;
  }
  *out = PyLong_AsLongLong(v);
  return !(*out == -1 && PyErr_Occurred());
}

bool get_dtype(PyObject* params, const char* key, DType* out) {
  PyObject* v = PyDict_GetItemString(params, key);
  const char* name = v != nullptr ? PyUnicode_AsUTF8(v) : nullptr;
  if (name == nullptr) {
    PyErr_Clear();
    PyErr_Format(PyExc_KeyError, "cuda_launch_plan: %s must be a dtype name", key);
    return false;
  }
  for (DType t : {DType::kFloat, DType::kDouble, DType::kHalf, DType::kBFloat16})
    if (std::strcmp(name, dtype_name(t)) == 0) {
      *out = t;
      return true;
    }
  PyErr_Format(PyExc_ValueError, "cuda_launch_plan: unknown dtype %s", name);
  return false;
}

// A conv op's geometry from N, C, H, W, K, R, S, stride, padding, dilation, groups.
bool get_conv_shape(PyObject* params, ConvShape* s) {
  int64_t v[11];
  const char* keys[11] = {"N", "C", "H", "W", "K", "R", "S",
                          "stride", "padding", "dilation", "groups"};
  for (int i = 0; i < 11; ++i)
    if (!get_int(params, keys[i], &v[i])) return false;
  *s = fr::make_conv_shape(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10]);
  if (s->N < 1 || s->C < 1 || s->H < 1 || s->W < 1 || s->K < 1 || s->R < 1 || s->S < 1 ||
      s->stride < 1 || s->dilation < 1 || s->padding < 0 || s->groups != 1 || s->P < 1 ||
      s->Q < 1) {
    PyErr_SetString(PyExc_ValueError,
                    "cuda_launch_plan: not a conv the CUDA kernels run (empty, groups != 1, or "
                    "an output smaller than 1x1)");
    return false;
  }
  return true;
}

bool get_layout(PyObject* params, fr::Layout* L) {
  return get_int(params, "outer", &L->outer) && get_int(params, "C", &L->C) &&
         get_int(params, "inner", &L->inner);
}

bool plan_of(const char* op, PyObject* params, const DeviceTarget& t, OpLaunchPlan* plan) {
  ConvShape s{};
  fr::Layout L{};
  DType data{}, out{};
  int64_t a = 0, b = 0, c = 0;
  if (std::strcmp(op, "conv_fwd") == 0) {
    if (!get_conv_shape(params, &s) || !get_dtype(params, "dtype", &data) ||
        !get_int(params, "stats", &a) || !get_int(params, "residual", &b))
      return false;
    *plan = conv_fwd_plan(s, data, a, b, t);
  } else if (std::strcmp(op, "conv_bwd_data") == 0) {
    if (!get_conv_shape(params, &s) || !get_dtype(params, "dtype", &data) ||
        !get_int(params, "prev", &a) || !get_int(params, "residual", &b) ||
        !get_int(params, "operands_aligned", &c))
      return false;
    *plan = conv_dgrad_plan(s, data, a, b, c, t);
  } else if (std::strcmp(op, "conv_bwd_weight") == 0) {
    if (!get_conv_shape(params, &s) || !get_dtype(params, "dtype", &data) ||
        !get_dtype(params, "out_dtype", &out) || !get_int(params, "dy_aligned", &a) ||
        !get_int(params, "act_aligned", &b))
      return false;
    *plan = conv_wgrad_plan(s, data, out, a, b, t);
  } else if (std::strcmp(op, "bn_finalize") == 0) {
    if (!get_int(params, "C", &a) || !get_dtype(params, "dtype", &data)) return false;
    *plan = bn_finalize_plan(a, data, t);
  } else if (std::strcmp(op, "block_end") == 0) {
    if (!get_layout(params, &L) || !get_dtype(params, "dtype", &data) ||
        !get_int(params, "aligned", &a))
      return false;
    *plan = block_end_plan(L, data, a, t);
  } else if (std::strcmp(op, "block_end_bwd") == 0) {
    if (!get_layout(params, &L) || !get_dtype(params, "dtype", &data) ||
        !get_int(params, "projection", &a))
      return false;
    *plan = block_end_bwd_plan(L, data, a, t);
  } else {
    PyErr_Format(PyExc_ValueError, "cuda_launch_plan: unknown op %s", op);
    return false;
  }
  return true;
}

// cuda_launch_plan(op, params: dict, target: (arch, sms, shared_limit)) -> list of
// (name, function, grid, block, smem, config, bytes, flops, serial_steps, chunk).
PyObject* cuda_launch_plan(PyObject*, PyObject* args) {
  const char* op = nullptr;
  PyObject* params = nullptr;
  int arch = 0;
  long long sms = 0, shared_limit = 0;
  if (!PyArg_ParseTuple(args, "sO!(iLL)", &op, &PyDict_Type, &params, &arch, &sms,
                        &shared_limit))
    return nullptr;
  if (sms < 1) {
    PyErr_SetString(PyExc_ValueError, "cuda_launch_plan: a target has at least one SM");
    return nullptr;
  }
  OpLaunchPlan plan;
  try {
    if (!plan_of(op, params, DeviceTarget{arch, sms, shared_limit}, &plan)) return nullptr;
  } catch (const std::bad_alloc&) {
    return PyErr_NoMemory();
  }
  PyObject* out = PyList_New(0);
  for (const KernelLaunch& l : plan.launches) {
    PyObject* row = Py_BuildValue(
        "(ss(LLL)(LLL)LsLLLL)", l.name.c_str(), l.function, (long long)l.grid.x,
        (long long)l.grid.y, (long long)l.grid.z, (long long)l.block.x, (long long)l.block.y,
        (long long)l.block.z, (long long)l.smem, l.config.c_str(), (long long)l.bytes,
        (long long)l.flops, (long long)l.serial_steps, (long long)l.chunk);
    if (row == nullptr || PyList_Append(out, row) != 0) {
      Py_XDECREF(row);
      Py_DECREF(out);
      return nullptr;
    }
    Py_DECREF(row);
  }
  return out;
}

PyMethodDef fr_methods[] = {
    {"cuda_launch_plan", cuda_launch_plan, METH_VARARGS,
     "The cuda backend's launches for one op call (csrc/cuda/launch_plan.h); "
     "use fused_resnet.cuda_plans.op_plan."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef fr_module = {
    PyModuleDef_HEAD_INIT, "_C",
    "fused_resnet C++/CUDA kernels; the ops are registered in torch.ops.fused_resnet.", -1,
    fr_methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&fr_module); }
