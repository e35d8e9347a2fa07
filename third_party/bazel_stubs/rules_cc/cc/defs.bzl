# Offline stand-in for @rules_cc, used only by Bazel's own @bazel_tools packages.
# Debian's bazel-bootstrap (Bazel 4.2.3) would otherwise download rules_cc while
# resolving toolchains for py_test.  Each macro forwards to Bazel's native rule.
# See third_party/bazel_stubs/README.md.

def cc_binary(**attrs):
    native.cc_binary(**attrs)


def cc_import(**attrs):
    native.cc_import(**attrs)


def cc_library(**attrs):
    native.cc_library(**attrs)


def cc_proto_library(**attrs):
    native.cc_proto_library(**attrs)


def cc_test(**attrs):
    native.cc_test(**attrs)


def cc_toolchain(**attrs):
    native.cc_toolchain(**attrs)


def cc_toolchain_suite(**attrs):
    native.cc_toolchain_suite(**attrs)


def objc_library(**attrs):
    native.objc_library(**attrs)
