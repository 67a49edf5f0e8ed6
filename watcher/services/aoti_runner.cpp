// Runs an AOTInductor package with Python's GIL released.
//
// torch's own binding (torch._inductor.aoti_load_package) holds the GIL for the whole model run
// (pytorch/pytorch#197516), so while the int8 model computes a batch every other Python thread of
// imgwatch waits: the files being read, hashed and decoded for the next batch, the catalog and
// Milvus writes, the daemon's HTTP answers. imgwatch.services.aoti_runner builds this once per
// torch and Python into the int8 compile cache.

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/csrc/utils/pybind.h>

#include <pybind11/stl.h>

#include <string>
#include <vector>

namespace py = pybind11;

namespace {

class Runner {
 public:
  explicit Runner(const std::string& package) : loader_(package) {}

  std::vector<at::Tensor> run(std::vector<at::Tensor> inputs) {
    py::gil_scoped_release released;
    return loader_.run(inputs);
  }

 private:
  torch::inductor::AOTIModelPackageLoader loader_;
};

}  // namespace

PYBIND11_MODULE(imgwatch_aoti_runner, m) {
  // module_local: each built copy (one per cache directory) registers its own type.
  py::class_<Runner>(m, "Runner", py::module_local())
      .def(py::init<const std::string&>(), py::arg("package"))
      .def("run", &Runner::run, py::arg("inputs"));
}
