vcl 4.1;
# The local edge for tests: one origin on loopback, purge allowed from
# loopback only. The operator renders its own VCL for clusters (phase 3).

import std;

backend origin {
    .host = "127.0.0.1";
    .port = "@ORIGIN_PORT@";
}

acl purgers {
    "127.0.0.1";
}

sub vcl_recv {
    if (req.method == "PURGE") {
        if (client.ip !~ purgers) {
            return (synth(405, "purge not allowed"));
        }
        return (purge);
    }
}

sub vcl_deliver {
    if (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } else {
        set resp.http.X-Cache = "MISS";
    }
}
