-- A typo, a function value, a wrong type: each is refused with its key path.
lisen = { socket = "/tmp/x.sock" }
listen = { socket = print }
limits = { queue_depth = "many" }
models = { { path = 42 } }
while true do end
