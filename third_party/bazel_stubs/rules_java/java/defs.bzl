# Offline stand-in for @rules_java, used only by Bazel's own @bazel_tools packages.
# Debian's bazel-bootstrap (Bazel 4.2.3) would otherwise download rules_java while
# resolving toolchains for py_test.  Each macro forwards to Bazel's native rule.
# See third_party/bazel_stubs/README.md.

def java_binary(**attrs):
    native.java_binary(**attrs)


def java_import(**attrs):
    native.java_import(**attrs)


def java_library(**attrs):
    native.java_library(**attrs)


def java_lite_proto_library(**attrs):
    native.java_lite_proto_library(**attrs)


def java_plugin(**attrs):
    native.java_plugin(**attrs)


def java_proto_library(**attrs):
    native.java_proto_library(**attrs)


def java_runtime(**attrs):
    native.java_runtime(**attrs)


def java_test(**attrs):
    native.java_test(**attrs)


def java_toolchain(**attrs):
    native.java_toolchain(**attrs)
