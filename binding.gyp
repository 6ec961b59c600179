{
  # Native parts are Linux-only (TCP_ZEROCOPY_RECEIVE). Elsewhere only a no-op target is
  # defined, so `npm install` still succeeds and the package copies through net.Socket.
  "variables": {
    "zc_cflags": ["-std=c++17", "-Wall", "-Wextra", "-fvisibility=hidden", "-O2"]
  },
  "conditions": [
    ["OS=='linux'", {
      "targets": [
        {
          "target_name": "tcp_zerocopy",
          "sources": [
            "native/addon.cc",
            "native/copy_blocks.cc",
            "native/direct_buffer.cc",
            "native/errors.cc",
            "native/move_watch.cc",
            "native/pool.cc",
            "native/probe.cc",
            "native/receiver.cc",
            "native/receiver_copy.cc",
            "native/write_fault.cc"
          ],
          "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
          "defines": [
            "NAPI_VERSION=8",
            "NODE_ADDON_API_DISABLE_DEPRECATED",
            "NAPI_CPP_EXCEPTIONS",
            # Once an environment stops (worker terminate(), process.exit() in a worker),
            # a C++ exception from a failed Node-API call cannot be rethrown to JS; without
            # this node-addon-api throws again from its catch handler and std::terminate()
            # aborts the whole process. With it the exception is dropped (nothing in JS
            # can see it any more).
            "NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS"
          ],
          "cflags!": ["-fno-exceptions"],
          "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++1y", "-std=gnu++20"],
          "cflags_cc": ["<@(zc_cflags)", "-fexceptions"],
          "conditions": [
            # Node 23+'s V8 headers (native/direct_buffer.cc) refuse anything below C++20;
            # the last -std given wins.
            ["node_module_version >= 131", {"cflags_cc": ["-std=c++20"]}]
          ]
        },
        {
          "target_name": "zc_sender",
          "type": "executable",
          "sources": ["native/sender.cc"],
          "cflags_cc!": ["-std=gnu++17", "-std=gnu++1y", "-std=gnu++20"],
          "cflags_cc": ["<@(zc_cflags)"]
        }
      ]
    }, {
      "targets": [
        {
          "target_name": "tcp_zerocopy_unsupported_platform",
          "type": "none"
        }
      ]
    }]
  ]
}
