# PostgreSQL for chatty: the sequencer and source of truth. Encrypted at rest, TLS enforced,
# automated backups with point-in-time recovery, optional Multi-AZ.

locals {
  engine_major = split(".", var.engine_version)[0]
}

# The master password is drawn once by Secrets Manager and kept in a secret. The data source
# draws a new value on every plan; ignore_changes on the secret version keeps the first one,
# and everything else reads the stable value from the secret version. To rotate, replace the
# secret version (terraform apply -replace=module.rds.aws_secretsmanager_secret_version.master_password).
data "aws_secretsmanager_random_password" "master" {
  password_length     = 40
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret" "master_password" {
  name_prefix             = "${var.name}/db-master-password-"
  description             = "Master password of RDS instance ${var.name}"
  recovery_window_in_days = var.secret_recovery_window_days
  kms_key_id              = var.kms_key_arn

  tags = var.tags
}

resource "aws_secretsmanager_secret_version" "master_password" {
  secret_id     = aws_secretsmanager_secret.master_password.id
  secret_string = data.aws_secretsmanager_random_password.master.random_password

  lifecycle {
    ignore_changes = [secret_string]
  }
}

# The application's role (see "Database roles" in docs/operations.md): the serving tasks
# connect as it and may only read and write rows. `chatty migrate` (a one-off task connected
# as the master user) creates it, or resets its password, from this secret after migrating.
data "aws_secretsmanager_random_password" "app" {
  password_length     = 40
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret" "app_password" {
  name_prefix             = "${var.name}/db-app-password-"
  description             = "Password of the application role ${var.app_username} of RDS instance ${var.name}"
  recovery_window_in_days = var.secret_recovery_window_days
  kms_key_id              = var.kms_key_arn

  tags = var.tags
}

resource "aws_secretsmanager_secret_version" "app_password" {
  secret_id     = aws_secretsmanager_secret.app_password.id
  secret_string = data.aws_secretsmanager_random_password.app.random_password

  lifecycle {
    ignore_changes = [secret_string]
  }
}

resource "aws_db_subnet_group" "this" {
  name        = var.name
  description = "Private subnets of ${var.name}"
  subnet_ids  = var.subnet_ids

  tags = var.tags
}

resource "aws_db_parameter_group" "this" {
  name_prefix = "${var.name}-pg${local.engine_major}-"
  family      = "postgres${local.engine_major}"
  description = "chatty: TLS required, slow statements logged"

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  parameter {
    name  = "log_min_duration_statement"
    value = "500"
  }

  tags = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_db_instance" "this" {
  identifier     = var.name
  engine         = "postgres"
  engine_version = var.engine_version
  instance_class = var.instance_class

  allocated_storage     = var.allocated_storage
  max_allocated_storage = var.max_allocated_storage
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = var.kms_key_arn

  db_name  = var.database_name
  username = var.username
  password = aws_secretsmanager_secret_version.master_password.secret_string
  port     = 5432

  db_subnet_group_name   = aws_db_subnet_group.this.name
  vpc_security_group_ids = [var.security_group_id]
  publicly_accessible    = false
  parameter_group_name   = aws_db_parameter_group.this.name

  multi_az                  = var.multi_az
  backup_retention_period   = var.backup_retention_days
  backup_window             = var.backup_window
  maintenance_window        = var.maintenance_window
  copy_tags_to_snapshot     = true
  delete_automated_backups  = false
  deletion_protection       = var.deletion_protection
  skip_final_snapshot       = false
  final_snapshot_identifier = "${var.name}-final"

  auto_minor_version_upgrade      = true
  apply_immediately               = var.apply_immediately
  enabled_cloudwatch_logs_exports = ["postgresql", "upgrade"]

  performance_insights_enabled    = var.performance_insights_enabled
  performance_insights_kms_key_id = var.performance_insights_enabled ? var.kms_key_arn : null

  tags = var.tags
}
