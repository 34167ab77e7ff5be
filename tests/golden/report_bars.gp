title = "bars"
xlabel = "variant"
ylabel = "overhead"
ns = 2
nx = 2
logx = 0
integer_x = 0
array series[2]
series[1] = "model.block=vanilla"
series[2] = "model.block=momentum"
xtics_bars = '("lb" 0, "ssr_l" 1)'
