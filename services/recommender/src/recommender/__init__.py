"""`recommender-service`: a SASRec student behind BentoML (see `recommender.service`)."""
