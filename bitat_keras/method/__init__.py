"""BiTAT's transform: the configuration, input statistics, grouping and PCA (Eqs. 6-11), the
block transform s and V trained with the layers (Eqs. 12-13), and its trained record."""
