"""Power modes: Jetson mode spaces, power model, Pagoda rooflines, PowerTrain predictors, Fulcrum."""
