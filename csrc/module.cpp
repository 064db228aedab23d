// `import fused_resnet._C` loads this library, which runs the static TORCH_LIBRARY /
// TORCH_LIBRARY_IMPL registrations; the ops then live in torch.ops.fused_resnet. The module
// itself is empty (only Python.h here: pybind11/torch/extension.h would triple build time).
// Import torch first so libtorch is already loaded.
#include <Python.h>

static PyModuleDef fr_module = {
    PyModuleDef_HEAD_INIT, "_C",
    "fused_resnet C++/CUDA kernels; the ops are registered in torch.ops.fused_resnet.", -1,
    nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&fr_module); }
