{
  # Native parts are Linux-only (TCP_ZEROCOPY_RECEIVE). On other systems the targets
  # are empty so `npm install` still succeeds and the package falls back to copying.
  "variables": {
    "zc_cflags": ["-std=c++17", "-Wall", "-Wextra", "-fvisibility=hidden", "-O2"]
  },
  "targets": [
    {
      "target_name": "tcp_zerocopy",
      "conditions": [
        ["OS=='linux'", {
          "sources": [
            "native/addon.cc",
            "native/errors.cc",
            "native/pool.cc",
            "native/probe.cc",
            "native/receiver.cc"
          ],
          "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
          "defines": [
            "NAPI_VERSION=8",
            "NODE_ADDON_API_DISABLE_DEPRECATED",
            "NAPI_CPP_EXCEPTIONS"
          ],
          "cflags!": ["-fno-exceptions"],
          "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++1y", "-std=gnu++20"],
          "cflags_cc": ["<@(zc_cflags)", "-fexceptions"]
        }]
      ]
    },
    {
      "target_name": "zc_sender",
      "type": "executable",
      "conditions": [
        ["OS=='linux'", {
          "sources": ["native/sender.cc"],
          "cflags!": ["-fno-exceptions"],
          "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++1y", "-std=gnu++20"],
          "cflags_cc": ["<@(zc_cflags)"]
        }]
      ]
    }
  ]
}
