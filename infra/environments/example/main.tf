# Example environment: the whole chatty stack in one AWS account and region.
#
#   cp terraform.tfvars.example terraform.tfvars   # fill in
#   cp backend.hcl.example backend.hcl             # fill in
#   terraform init -backend-config=backend.hcl
#   terraform apply
#
# Then push a first image (the deploy workflow does it) and point public_hostname at the ALB.

locals {
  name = "chatty-${var.environment}"
  tags = {
    Service = "chatty"
  }
}

module "network" {
  source = "../../modules/network"

  name               = local.name
  vpc_cidr           = var.vpc_cidr
  az_count           = var.az_count
  single_nat_gateway = var.single_nat_gateway
  tags               = local.tags
}

module "security" {
  source = "../../modules/security"

  name              = local.name
  vpc_id            = module.network.vpc_id
  vpc_cidr          = module.network.vpc_cidr
  alb_ingress_cidrs = var.alb_ingress_cidrs
  app_port          = 8080
  metrics_port      = 9090
  tags              = local.tags
}

module "ecr" {
  source = "../../modules/ecr"

  name = "chatty-${var.environment}"
  tags = local.tags
}

module "alb" {
  source = "../../modules/alb"

  name                       = local.name
  vpc_id                     = module.network.vpc_id
  public_subnet_ids          = module.network.public_subnet_ids
  security_group_id          = module.security.alb_security_group_id
  certificate_arn            = var.certificate_arn
  app_port                   = 8080
  idle_timeout               = var.alb_idle_timeout
  deregistration_delay       = var.deregistration_delay
  health_check_path          = "/readyz"
  enable_deletion_protection = var.alb_deletion_protection
  tags                       = local.tags
}

module "rds" {
  source = "../../modules/rds"

  name                  = local.name
  subnet_ids            = module.network.private_subnet_ids
  security_group_id     = module.security.rds_security_group_id
  engine_version        = var.db_engine_version
  instance_class        = var.db_instance_class
  multi_az              = var.db_multi_az
  backup_retention_days = var.db_backup_retention_days
  deletion_protection   = var.db_deletion_protection
  tags                  = local.tags
}

module "redis" {
  source = "../../modules/redis"

  name               = local.name
  subnet_ids         = module.network.private_subnet_ids
  security_group_id  = module.security.redis_security_group_id
  node_type          = var.redis_node_type
  num_cache_clusters = var.redis_num_cache_clusters
  tags               = local.tags
}

module "secrets" {
  source = "../../modules/secrets"

  name         = local.name
  database_url = module.rds.database_url
  # The serving tasks connect as the application role; only `chatty migrate` as the owner.
  migration_database_url = module.rds.migration_database_url
  redis_url              = module.redis.redis_url
  tags                   = local.tags
}

module "ecs" {
  source = "../../modules/ecs"

  name                    = local.name
  aws_region              = var.aws_region
  image_repository_url    = module.ecr.repository_url
  ecr_repository_arn      = module.ecr.repository_arn
  image_tag               = var.image_tag
  cpu                     = var.task_cpu
  memory                  = var.task_memory
  app_port                = 8080
  metrics_port            = 9090
  stop_timeout            = var.stop_timeout
  subnet_ids              = module.network.private_subnet_ids
  security_group_id       = module.security.tasks_security_group_id
  target_group_arn        = module.alb.target_group_arn
  alb_arn_suffix          = module.alb.alb_arn_suffix
  target_group_arn_suffix = module.alb.target_group_arn_suffix
  desired_count           = var.desired_count
  min_capacity            = var.min_capacity
  max_capacity            = var.max_capacity
  log_retention_days      = var.log_retention_days
  enable_execute_command  = var.enable_execute_command
  secrets                 = module.secrets.container_secrets
  # Each task's ADOT sidecar scrapes /metrics into the Prometheus workspace.
  metrics_remote_write_url = module.prometheus.remote_write_url
  metrics_workspace_arn    = module.prometheus.workspace_arn
  migration_secrets        = module.secrets.migration_secrets
  # The same sidecar sends sampled traces to X-Ray when traces_enabled (off by default).
  traces_enabled     = var.traces_enabled
  trace_sample_ratio = var.trace_sample_ratio

  environment = {
    CHATTY__AUTH__ALLOWED_ORIGINS = join(",", concat(["https://${var.public_hostname}"], var.extra_allowed_origins))
    # The ALB's nodes live in the public subnets: trust their X-Forwarded-For (the last entry,
    # which the ALB appends), so per-IP caps count clients, not the load balancer.
    CHATTY__SERVER__TRUSTED_PROXIES = join(",", module.network.public_subnet_cidrs)
    RUST_LOG                        = "info"
  }

  tags = local.tags

  # The service registers into the target group, which must be attached to a listener first.
  depends_on = [module.alb]
}

module "github_oidc" {
  source = "../../modules/github_oidc"

  name                 = local.name
  github_repository    = var.github_repository
  github_environment   = var.github_environment
  create_oidc_provider = var.create_github_oidc_provider
  oidc_provider_arn    = var.github_oidc_provider_arn
  ecr_repository_arn   = module.ecr.repository_arn
  ecs_service_arn      = module.ecs.service_arn
  ecs_cluster_arn      = module.ecs.cluster_arn
  passable_role_arns   = [module.ecs.execution_role_arn, module.ecs.task_role_arn]
  tags                 = local.tags

  ecs_migrate_task_definition_family = module.ecs.migrate_task_definition_family
}

# Chatty's own metrics and its Prometheus alerts (grafana/alerts.yml) on AWS; alerts go to
# the same SNS topic as the CloudWatch alarms.
module "prometheus" {
  source = "../../modules/prometheus"

  name          = local.name
  aws_region    = var.aws_region
  rules_file    = "${path.root}/../../../grafana/alerts.yml"
  sns_topic_arn = module.alarms.topic_arn
  tags          = local.tags
}

module "alarms" {
  source = "../../modules/alarms"

  name                       = local.name
  alarm_email                = var.alarm_email
  alb_arn_suffix             = module.alb.alb_arn_suffix
  target_group_arn_suffix    = module.alb.target_group_arn_suffix
  ecs_cluster_name           = module.ecs.cluster_name
  ecs_service_name           = module.ecs.service_name
  rds_instance_id            = module.rds.instance_id
  redis_replication_group_id = module.redis.replication_group_id
  redis_node_count           = var.redis_num_cache_clusters
  tags                       = local.tags
}
